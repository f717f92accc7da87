"""Feature geometry against hand-written formulas on small inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evals.geometry import (angular_similarity, cluster_agreement, cooccurrence_clusters, covariance_spectrum,
                            feature_map, geometric_clusters, lobes_vs_geometry, neighbour_clusters, pca_2d,
                            phi_coefficients, power_law_slope, spectral_clusters)
from workbench.errors import WorkbenchError


def test_phi_equals_the_contingency_formula():
    g = torch.Generator().manual_seed(0)
    active = torch.rand(300, 6, generator=g) < torch.tensor([0.1, 0.3, 0.5, 0.3, 0.05, 0.0])
    active[:, 3] |= active[:, 1]  # feature 3 co-occurs with 1
    a = active.float()
    phi = phi_coefficients(a.t() @ a, 300)
    for i in range(6):
        for j in range(6):
            x, y = active[:, i], active[:, j]
            n11 = int((x & y).sum()); n00 = int((~x & ~y).sum()); n10 = int((x & ~y).sum()); n01 = int((~x & y).sum())
            den = math.sqrt((n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00))
            want = (n11 * n00 - n10 * n01) / den if den else 0.0
            assert float(phi[i, j]) == pytest.approx(want, abs=1e-6)
    assert phi[1, 3] > 0.5


def test_angular_clusters_recover_planted_groups_and_ami():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(3, 16, generator=g)
    labels = torch.arange(60) % 3
    w = centres[labels] + 0.15 * torch.randn(60, 16, generator=g)
    sim = angular_similarity(w)
    assert torch.allclose(sim.diagonal(), torch.ones(60), atol=1e-3)
    cos = torch.nn.functional.cosine_similarity(w[0], w[1], dim=0)
    assert float(sim[0, 1]) == pytest.approx(1 - math.acos(float(cos)) / math.pi, abs=1e-5)
    found = geometric_clusters(w, 3)
    assert cluster_agreement(found, labels.numpy()) == pytest.approx(1.0)
    assert abs(cluster_agreement(np.random.default_rng(0).permutation(found), labels.numpy())) < 0.2
    # lobes: features of a group fire together in chunks -> co-occurrence clusters agree with geometry
    chunk_group = torch.randint(0, 3, (400,), generator=g)
    active = (labels[None, :] == chunk_group[:, None]) & (torch.rand(400, 60, generator=g) < 0.7)
    a = active.float()
    res = lobes_vs_geometry(a.t() @ a, 400, w, torch.arange(60), n_clusters=3)
    assert res["ami"] > 0.9 and abs(res["ami_shuffled"]) < 0.2


def test_power_law_slope_of_a_planted_spectrum():
    d = 64
    ev = torch.arange(1, d + 1, dtype=torch.float64) ** -1.5
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    x = torch.randn(20000, d, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * ev.sqrt() @ q.t()
    spec = covariance_spectrum(x)
    assert torch.all(spec[:-1] >= spec[1:])
    slope, _ = power_law_slope(spec, skip=0, tail=0.3)
    assert slope == pytest.approx(-1.5, abs=0.1)


def test_phi_of_a_hand_worked_table():
    """Two features over 10 chunks: both fire in 3, only the first in 1, only the second in 1, neither
    in 5. phi = (3*5 - 1*1) / sqrt(4*6*4*6) = 14/24; a feature that never fires has phi 0."""
    cooc = torch.tensor([[4, 3, 0], [3, 4, 0], [0, 0, 0]])
    phi = phi_coefficients(cooc, 10)
    assert float(phi[0, 1]) == pytest.approx(14 / 24, abs=1e-6) and float(phi[1, 0]) == pytest.approx(14 / 24, abs=1e-6)
    assert float(phi[0, 0]) == pytest.approx(1.0, abs=1e-6)
    assert float(phi[0, 2]) == 0.0 and float(phi[2, 2]) == 0.0
    # never together: n11 = 0, n10 = n01 = 4, n00 = 2 -> (0*2 - 4*4) / sqrt(4*6*4*6) = -16/24
    assert float(phi_coefficients(torch.tensor([[4, 0], [0, 4]]), 10)[0, 1]) == pytest.approx(-16 / 24, abs=1e-6)


def test_angular_similarity_at_known_angles():
    """1 - angle/pi: same direction 1, 60 degrees 2/3, orthogonal 1/2, 120 degrees 1/3, opposite 0;
    the length of a direction does not matter."""
    c, s = math.cos(math.pi / 3), math.sin(math.pi / 3)
    w = torch.tensor([[1.0, 0.0], [3 * c, 3 * s], [0.0, 2.0], [-c, s], [-5.0, 0.0]])
    sim = angular_similarity(w)
    want = torch.tensor([1.0, 2 / 3, 1 / 2, 1 / 3, 0.0])
    torch.testing.assert_close(sim[0], want, atol=2e-3, rtol=0)  # arccos is steep at +-1 in float32
    torch.testing.assert_close(sim, sim.t())


def _planted_groups(n_groups: int = 4, per: int = 15, d: int = 24, noise: float = 0.1, seed: int = 5):
    """Decoder rows scattered tightly around orthogonal group centres, rows of a group interleaved."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.linalg.qr(torch.randn(d, n_groups, generator=g))[0].t()
    labels = torch.arange(n_groups * per) % n_groups
    return centres[labels] + noise * torch.randn(len(labels), d, generator=g), labels


def _same_partition(a, b) -> bool:
    """Equal up to renaming the labels: the pairs (a_i, b_i) match one to one."""
    pairs = set(zip(np.asarray(a).tolist(), np.asarray(b).tolist()))
    return len(pairs) == len(set(np.asarray(a).tolist())) == len(set(np.asarray(b).tolist()))


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")  # planted groups are meant to be apart
def test_spectral_clusters_recover_planted_groups_exactly():
    w, labels = _planted_groups()
    assert _same_partition(geometric_clusters(w, 4), labels)
    # negative affinities count as none: between orthogonal groups (1/2 - 0.6 < 0) nothing is left
    aff = angular_similarity(w)
    assert _same_partition(spectral_clusters(aff - 0.6, 4), labels)
    with pytest.raises(WorkbenchError, match="4 clusters need more than 4 features"):
        spectral_clusters(aff[:4, :4], 4)


def test_cooccurrence_clusters_recover_planted_lobes_exactly():
    """Features of a lobe fire in the same chunks, never in another lobe's chunks."""
    g = torch.Generator().manual_seed(6)
    labels = torch.arange(30) % 3
    chunk_lobe = torch.randint(0, 3, (500,), generator=g)
    active = (labels[None, :] == chunk_lobe[:, None]) & (torch.rand(500, 30, generator=g) < 0.6)
    a = active.float()
    assert _same_partition(cooccurrence_clusters(a.t() @ a, 500, 3), labels)


def test_neighbour_clusters_recover_planted_groups_and_leave_loners_alone():
    w, labels = _planted_groups(n_groups=3, per=6)
    loner = torch.linalg.qr(torch.cat([w.t(), torch.randn(24, 1)], 1))[0][:, -1]  # orthogonal to every row
    w = torch.cat([w, loner[None]])
    found = neighbour_clusters(w, neighbours=3, min_cos=0.5)
    assert _same_partition(found[:-1], labels)
    assert (found[:-1] != found[-1]).all()  # its own component
    # with a cut-off no pair reaches, every feature is its own cluster
    assert len(set(neighbour_clusters(w, neighbours=3, min_cos=0.999).tolist())) == w.shape[0]


def test_cluster_agreement_is_ami():
    a = np.array([0, 0, 1, 1, 2, 2])
    assert cluster_agreement(a, np.array([5, 5, 3, 3, 9, 9])) == pytest.approx(1.0)  # a renaming
    assert cluster_agreement(a, np.array([0, 1, 0, 1, 0, 1])) < 0.05  # independent of a


def test_covariance_spectrum_equals_numpy():
    w = torch.randn(200, 10, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * torch.arange(1, 11)
    want = np.sort(np.linalg.eigvalsh(np.cov(w.numpy(), rowvar=False)))[::-1]
    np.testing.assert_allclose(covariance_spectrum(w).numpy(), want, rtol=1e-10, atol=1e-12)


def test_power_law_slope_of_exact_spectra():
    """Exact power laws, with a first eigenvalue off the line and a numerical floor in the tail:
    `skip` and `tail` leave those out and the slope and intercept come back to 1e-9."""
    r = np.arange(1, 201, dtype=np.float64)
    for alpha, c in ((-0.7, 3.0), (-1.5, 0.2), (-2.4, 50.0)):
        ev = c * r ** alpha
        ev[0] = 1e3  # a mean-like direction far above the line
        ev[-20:] = 1e-14  # the floor
        slope, intercept = power_law_slope(torch.from_numpy(ev), skip=1, tail=0.1)
        assert slope == pytest.approx(alpha, abs=1e-9) and intercept == pytest.approx(math.log(c), abs=1e-9)


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")  # planted groups are meant to be apart
def test_feature_map_puts_planted_groups_together():
    """Each planted group lands in its own region: every feature is nearer its own group's centroid
    in the map than any other group's, and the groups are far apart relative to their spread."""
    w, labels = _planted_groups(n_groups=3, per=30, noise=0.15)
    xy = feature_map(w, neighbours=10)
    lab = labels.numpy()
    cent = np.stack([xy[lab == k].mean(0) for k in range(3)])
    nearest = np.linalg.norm(xy[:, None, :] - cent[None], axis=2).argmin(1)
    assert (nearest == lab).all()
    spread = max(np.linalg.norm(xy[lab == k] - cent[k], axis=1).mean() for k in range(3))
    gap = min(np.linalg.norm(cent[i] - cent[j]) for i in range(3) for j in range(i + 1, 3))
    assert gap > 3 * spread


def test_pca_2d_finds_the_planted_axes():
    """Points with standard deviations 5, 2, 0.1, 0.1, 0.1 along a random rotation: the two
    components are the first two axes (up to sign), in order, with their share of the variance."""
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.normal(size=(5, 5)))[0]
    z = rng.normal(size=(400, 5))
    z = np.linalg.qr(z - z.mean(0))[0] * np.sqrt(400) * np.array([5, 2, 0.1, 0.1, 0.1])  # exactly uncorrelated
    pts = z @ q.T + 3.0
    coords, ratio = pca_2d(pts)
    for k in range(2):
        assert abs(np.corrcoef(coords[:, k], z[:, k])[0, 1]) > 1 - 1e-9
    var = z.var(0)
    np.testing.assert_allclose(ratio, var[:2] / var.sum(), rtol=1e-6)
    assert pca_2d(pts[:2])[0].shape == (2, 2)  # too few points: zeros, no error


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.evals.inspect_support import tiny_for

    torch.set_num_threads(1)
    return tiny_for(tmp_path_factory)


def test_cluster_reconstructions_equal_brute_force(tiny):
    """Every row where a member fires, in cache order: the members' part of the reconstruction
    and the member with the largest activation, against all codes computed at once."""
    from evals.geometry import cluster_reconstructions
    from harvesting import CacheReader
    from saes import load_sae

    sae = load_sae(tiny["sae"])
    r = CacheReader(tiny["cache"])
    shards = [r.load_shard(i) for i in range(len(r.shards))]
    x = torch.cat([s[sae.cfg.hook] for s in shards]).float()
    toks = torch.cat([s["token_ids"] for s in shards])
    members = [3, 11, 40]
    with torch.no_grad():
        z = sae.encode_dense(x)[:, members]
        w = sae.W_dec[members].float()
    hit = (z > 0).any(1)
    want = z[hit] @ w
    out = cluster_reconstructions(sae, tiny["cache"], members, max_tokens=10**9, batch_size=100)
    assert 0 < out["recon"].shape[0] == int(hit.sum()) < x.shape[0]
    np.testing.assert_allclose(out["recon"], want.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out["winner"], np.array(members)[z[hit].argmax(1).numpy()])
    np.testing.assert_array_equal(out["token_ids"], toks[hit].numpy())
    # the first max_tokens rows, not a batch or a shard more
    part = cluster_reconstructions(sae, tiny["cache"], members, max_tokens=555, batch_size=100)
    assert part["recon"].shape[0] == int(hit[:555].sum())
    np.testing.assert_array_equal(part["token_ids"], toks[:555][hit[:555]].numpy())


def test_cluster_reconstructions_refuse_a_cache_without_the_sae_hook(tiny):
    """No silent reading of another layer: one line naming the hook and the hooks the cache has."""
    from evals.geometry import cluster_reconstructions
    from saes import load_sae

    sae = load_sae(tiny["sae"])
    sae.cfg.hook = "blocks.0.hook_resid_post"
    with pytest.raises(WorkbenchError, match=r"blocks\.0\.hook_resid_post.*holds only blocks\.1\.hook_resid_post") as e:
        cluster_reconstructions(sae, tiny["cache"], [0, 1])
    assert "\n" not in str(e.value)


def test_reconstructions_from_codes_equal_cluster_reconstructions(tiny):
    """Reading the codes once and slicing a cluster out of them gives the same rows, reconstructions,
    winners and tokens as reading the cache for that cluster."""
    from evals.geometry import cache_codes, cluster_reconstructions, reconstructions_from_codes
    from saes import load_sae

    sae = load_sae(tiny["sae"])
    codes = cache_codes(sae, tiny["cache"], max_tokens=10**9, batch_size=100)
    for members in ([3, 11, 40], [0], [5, 6, 7, 8, 9]):
        want = cluster_reconstructions(sae, tiny["cache"], members, max_tokens=10**9, batch_size=100)
        got = reconstructions_from_codes(codes, sae.W_dec, members)
        np.testing.assert_allclose(got["recon"], want["recon"], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(got["token_ids"], want["token_ids"])
        np.testing.assert_array_equal(got["winner"], want["winner"])
