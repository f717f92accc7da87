"""Concept crystals and the galaxy-scale measures (Li, Michaud, Tegmark et al. 2024) on planted data:
parallelograms of word-pair differences, LDA removing a distractor, the lobe sweep with a permutation
null, the clustering entropy and the spectrum slope with intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evals.geometry import (analogy_rank, clustering_entropy, distractor_r2, heldout_silhouette, lobe_sweep,
                            pair_differences, parallelogram_test, quadruple_shape, spectrum_slope_interval)


def _words(seed=0, d=64, noise=0.05, scale_queen=1.0):
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(d)
    vec = {}
    for m, f in [("man", "woman"), ("king", "queen"), ("boy", "girl"), ("father", "mother"), ("brother", "sister")]:
        vec[m] = rng.standard_normal(d) * 2
        vec[f] = vec[m] + (scale_queen if f == "queen" else 1.0) * g + noise * rng.standard_normal(d)
    for w in ["table", "river", "green", "seven"]:
        vec[w] = rng.standard_normal(d) * 2
    return vec


GENDER = [("man", "woman"), ("king", "queen"), ("boy", "girl"), ("father", "mother"), ("brother", "sister")]


def test_quadruple_shape_tells_a_parallelogram_from_a_trapezoid():
    vec = _words()
    s = quadruple_shape(vec["man"], vec["woman"], vec["king"], vec["queen"])
    assert s["cos"] > 0.98 and s["length_ratio"] == pytest.approx(1.0, abs=0.05) and s["residual"] < 0.1
    t = _words(scale_queen=2.0)
    s2 = quadruple_shape(t["man"], t["woman"], t["king"], t["queen"])
    assert s2["cos"] > 0.98 and s2["length_ratio"] == pytest.approx(2.0, abs=0.1)  # parallel sides, unequal: trapezoid
    assert s2["residual"] > 0.5


def test_a_planted_parallelogram_is_found_and_a_random_one_is_not():
    vec = _words()
    assert analogy_rank(vec, "man", "woman", "king", "queen") == 1
    res = parallelogram_test(vec, GENDER, permutations=500, seed=0)
    assert res["mean_cos"] > 0.95 and res["p_value"] < 0.01 and res["analogy_top1"] == 1.0
    # the same words with no shared offset: partners drawn at random
    rng = np.random.default_rng(1)
    flat = {w: rng.standard_normal(64) for w in vec}
    r2 = parallelogram_test(flat, GENDER, permutations=500, seed=0)
    assert r2["mean_cos"] < 0.3 and r2["p_value"] > 0.05


def _relations_with_distractor(seed=0, per=40, d=40):
    """Three relations, each a fixed offset, plus a large word-length-like distractor along u that
    varies from pair to pair regardless of relation."""
    rng = np.random.default_rng(seed)
    offsets = rng.standard_normal((3, d))
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    labels = np.repeat(np.arange(3), per)
    length = rng.normal(0, 8, len(labels))
    diffs = offsets[labels] + 0.3 * rng.standard_normal((len(labels), d)) + length[:, None] * u
    return diffs, labels, length, u


def test_lda_removes_a_planted_distractor():
    diffs, labels, length, u = _relations_with_distractor()
    raw = heldout_silhouette(diffs, labels, method="raw", seed=0)
    lda = heldout_silhouette(diffs, labels, method="lda", n_components=2, seed=0)
    assert raw["silhouette"] < 0.2 and lda["silhouette"] > 0.6
    # the distractor is what the raw differences encode most; LDA's projection keeps almost none of it
    assert distractor_r2(diffs, length) > 0.95
    assert distractor_r2(lda["projected"], length) < 0.2
    # shuffled relation labels: LDA has nothing to find on held-out pairs
    null = heldout_silhouette(diffs, labels, method="lda", n_components=2, seed=0, shuffles=20)
    assert null["null_mean"] < 0.1 and null["p_value"] < 0.05


def test_pair_differences_are_second_minus_first():
    vec = _words()
    diffs, labels, names = pair_differences(vec, {"gender": GENDER[:2], "other": [("table", "river")]})
    np.testing.assert_allclose(diffs[0], vec["woman"] - vec["man"])
    assert labels.tolist() == [0, 0, 1] and names == ["gender", "other"]


def test_lobe_sweep_with_a_permutation_null():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(45) % 3
    centres = torch.randn(3, 16, generator=g)
    w = centres[labels] + 0.15 * torch.randn(45, 16, generator=g)
    chunk_lobe = torch.randint(0, 3, (400,), generator=g)
    act = ((labels[None] == chunk_lobe[:, None]) & (torch.rand(400, 45, generator=g) < 0.6)).float()
    res = lobe_sweep(act.t() @ act, 400, w, torch.arange(45), ks=[2, 3, 5], shuffles=100, seed=0)
    by_k = {r["k"]: r for r in res}
    assert by_k[3]["ami"] > 0.9 and by_k[3]["p_value"] < 0.02 and abs(by_k[3]["null_mean"]) < 0.05
    assert by_k[3]["null_95"] < 0.2
    # geometry unrelated to the lobes: no k stands out
    w_rand = torch.randn(45, 16, generator=torch.Generator().manual_seed(5))
    res2 = lobe_sweep(act.t() @ act, 400, w_rand, torch.arange(45), ks=[3], shuffles=100, seed=0)
    assert res2[0]["ami"] < 0.2 and res2[0]["p_value"] > 0.01


def test_clustering_entropy_is_higher_for_clusters_than_for_a_gaussian():
    rng = np.random.default_rng(0)
    d = 8
    centres = rng.standard_normal((12, d)) * 3
    clustered = centres[rng.integers(0, 12, 800)] + 0.2 * rng.standard_normal((800, d))
    gauss = rng.standard_normal((800, d)) @ rng.standard_normal((d, d))
    c = clustering_entropy(clustered, n_components=d, repeats=5, seed=0)
    g = clustering_entropy(gauss, n_components=d, repeats=5, seed=0)
    # a Gaussian is the maximum-entropy cloud for its covariance: its excess over the matched null is ~0
    assert abs(g["excess"]) < 1.0 and c["excess"] > 5.0
    assert c["excess_interval"][0] > 2.0 and g["excess_interval"][0] < 0.5 < c["excess_interval"][0]


def test_spectrum_slope_interval_covers_a_planted_power_law():
    d = 48
    ev = np.arange(1, d + 1, dtype=float) ** -1.2
    q = np.linalg.qr(np.random.default_rng(2).standard_normal((d, d)))[0]
    x = np.random.default_rng(3).standard_normal((6000, d)) * np.sqrt(ev) @ q.T
    res = spectrum_slope_interval(torch.from_numpy(x), skip=0, tail=0.3, bootstrap=50, seed=0)
    lo, hi = res["interval"]
    assert lo < res["slope"] < hi and lo - 0.1 < -1.2 < hi + 0.1 and hi - lo < 0.3


def test_spectrum_slope_regression_interval_is_the_log_log_fit_error():
    """The paper's interval: t(0.975, n-2) x the standard error of the least-squares slope of
    log eigenvalue on log rank (scipy's linregress as the reference)."""
    from scipy.stats import linregress, t

    x = np.random.default_rng(4).standard_normal((3000, 32)) * np.arange(1, 33) ** -0.8
    res = spectrum_slope_interval(torch.from_numpy(x), skip=1, tail=0.1, bootstrap=5, seed=0)
    ev = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
    hi = int(32 * 0.9)
    ref = linregress(np.log(np.arange(2, hi + 1)), np.log(ev[1:hi]))
    half = t.ppf(0.975, hi - 3) * ref.stderr
    assert res["slope"] == pytest.approx(ref.slope, abs=1e-8)
    assert res["regression_interval"] == pytest.approx([ref.slope - half, ref.slope + half], abs=1e-8)
