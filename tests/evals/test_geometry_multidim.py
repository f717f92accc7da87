"""Irreducible multi-dimensional features (Engels et al. 2024): the separability and epsilon-mixture
indices, the radius filter, the paper's two clusterings and the cyclic-order test, on planted data."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from evals.geometry import (cyclic_order_test, engels_graph_clusters, mixture_index, mutual_information_bits,
                            plane_indices, plot_planes_by_token, separability_index)


def _circle(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 2 * np.pi, n)
    return np.stack([np.cos(t), np.sin(t)], 1) + 0.03 * rng.standard_normal((n, 2))


def _independent(n=3000, seed=1):
    """Two 1-D features that fire independently (each half the time), with independent magnitudes."""
    rng = np.random.default_rng(seed)
    a = rng.exponential(1, n) * (rng.random(n) < 0.5)
    b = rng.exponential(1, n) * (rng.random(n) < 0.5)
    return np.stack([a, b], 1) @ np.array([[0.8, 0.6], [-0.6, 0.8]])  # rotated: the index must find the axes


def _exclusive(n=3000, seed=2):
    """Two 1-D features that never fire together: every point lies on one of two rays."""
    rng = np.random.default_rng(seed)
    which = rng.random(n) < 0.5
    mag = rng.exponential(1, n)
    return np.stack([np.where(which, mag, 0.0), np.where(which, 0.0, mag)], 1)


def test_mutual_information_matches_a_contingency_reference():
    """MI of the 10x10 histogram equals sklearn's MI of the two bin labels (nats -> bits)."""
    from sklearn.metrics import mutual_info_score

    rng = np.random.default_rng(3)
    x = rng.standard_normal(2000)
    y = x + 0.5 * rng.standard_normal(2000)
    bx = np.clip(((x - x.min()) / (x.max() - x.min()) * 10).astype(int), 0, 9)
    by = np.clip(((y - y.min()) / (y.max() - y.min()) * 10).astype(int), 0, 9)
    assert mutual_information_bits(x, y, bins=10) == pytest.approx(mutual_info_score(bx, by) / np.log(2), rel=1e-6)
    # y = x: every point on the diagonal; MI equals the entropy of the binned x
    p = np.bincount(bx, minlength=10) / 2000
    h = -np.sum(p[p > 0] * np.log2(p[p > 0]))
    assert mutual_information_bits(x, x, bins=10) == pytest.approx(h, rel=1e-6)


def test_separability_is_the_minimum_over_rotations():
    pts = _independent()
    s, curve = separability_index(pts, bins=10, angles=100)
    assert curve.shape == (100,) and s == pytest.approx(curve.min())
    # rotating the cloud by hand to the axes gives (close to) the minimum
    back = pts @ np.array([[0.8, 0.6], [-0.6, 0.8]]).T
    assert mutual_information_bits(back[:, 0], back[:, 1], 10) < 0.05
    assert s <= mutual_information_bits(back[:, 0], back[:, 1], 10) + 0.02


def test_indices_separate_a_circle_from_independent_and_exclusive_features():
    circle, indep, excl = _circle(), _independent(), _exclusive()
    s_c, s_i = separability_index(circle)[0], separability_index(indep)[0]
    m_c, m_e = mixture_index(circle), mixture_index(excl)
    assert s_c > 0.5 and s_i < 0.1 and s_c > 5 * s_i  # the circle cannot be split into independent parts
    # half the exclusive points lie on one ray, so a line holds them; on a circle the best line is a tangent
    # band at the rim (about arccos(0.88) / pi = 0.16 of the points, more with the noise)
    assert m_c < 0.25 and m_e > 0.45 and m_e > 2 * m_c
    # a circle is irreducible on both counts: high separability index, low mixture index
    assert separability_index(excl)[0] < s_c


def test_mixture_index_is_the_fraction_within_epsilon_of_the_best_line():
    """Reference by brute force: 60% of the points on the line y = 2, 40% spread: a line through them holds
    at least 60%; scaling or translating the cloud does not change the index."""
    rng = np.random.default_rng(4)
    on = np.stack([rng.uniform(-3, 3, 600), np.full(600, 2.0)], 1)
    off = rng.uniform(-3, 3, (400, 2)) * 4
    pts = np.concatenate([on, off])
    m = mixture_index(pts, epsilon=0.1)
    assert m >= 0.6
    # brute reference over a fine grid of directions and offsets, hard threshold, paper's normalisation
    best = 0.0
    for th in np.linspace(0, np.pi, 91):
        p = pts @ np.array([np.cos(th), np.sin(th)])
        for c in np.quantile(p, np.linspace(0, 1, 101)):
            z = p - c
            best = max(best, float(np.mean(np.abs(z) < 0.1 * np.sqrt(np.mean(z ** 2)))))
    assert m == pytest.approx(best, abs=0.02)
    assert mixture_index(pts * 7 + 3, epsilon=0.1) == pytest.approx(m, abs=0.01)


def test_plane_indices_cover_every_plane_of_pcs_1_to_5_and_apply_the_radius_filter():
    rng = np.random.default_rng(5)
    t = rng.uniform(0, 2 * np.pi, 1500)
    circle = np.stack([3 * np.cos(t), 3 * np.sin(t)], 1)
    rest = rng.standard_normal((1500, 4)) * np.array([1.0, 0.8, 0.6, 0.4])
    x = np.concatenate([circle, rest], 1) @ np.linalg.qr(rng.standard_normal((6, 6)))[0]
    # 200 points at the origin: the radius filter drops them
    x = np.concatenate([x, np.zeros((200, 6))])
    res = plane_indices(x, n_components=5, radius=0.5, mixture_steps=60)
    pairs = {(r["pc_a"], r["pc_b"]) for r in res["planes"]}
    assert pairs == set(itertools.combinations(range(1, 6), 2))
    first = next(r for r in res["planes"] if (r["pc_a"], r["pc_b"]) == (1, 2))
    assert first["n_points"] <= 1500 + 5 and first["separability"] > 0.5
    assert res["explained_variance_ratio"].shape == (5,)
    other = [r["separability"] for r in res["planes"] if (r["pc_a"], r["pc_b"]) != (1, 2)]
    assert first["separability"] > max(other)


def test_cyclic_order_test_finds_a_planted_cycle_and_not_a_shuffled_one():
    n = 7
    ang = 2 * np.pi * np.arange(n) / n
    means = np.stack([np.cos(ang), np.sin(ang)], 1)
    res = cyclic_order_test(means, permutations=2000, seed=0)
    assert res["adjacent"] == n and res["in_cyclic_order"] and res["p_value"] < 0.01
    # reflected (anticlockwise) still cyclic
    assert cyclic_order_test(means[:, ::-1].copy(), permutations=500)["in_cyclic_order"]
    shuffled = means[np.array([0, 3, 6, 2, 5, 1, 4])]
    r2 = cyclic_order_test(shuffled, permutations=2000, seed=0)
    assert not r2["in_cyclic_order"] and r2["p_value"] > 0.05
    # the exact null for 7 classes: P(all 7 calendar neighbours adjacent) = 2 * 7 / 7! = 1/360
    assert res["p_value"] == pytest.approx(1 / 360, abs=0.004)


def test_engels_graph_clusters_link_the_top_2_including_self_and_prune():
    """Similarity top-2 includes the feature itself, so each feature links to its single nearest
    neighbour above the cut-off; components of size 1 and of `max_size` or more are dropped."""
    d = torch.eye(8)
    w = torch.stack([d[0], d[0] + 0.2 * d[1], d[0] + 0.1 * d[2],  # a group of 3 around e0
                     d[3], d[3] + 0.3 * d[4],  # a pair
                     d[5], d[6], d[7]])  # loners (orthogonal)
    comps = engels_graph_clusters(w, top_k=2, min_cos=0.5)
    assert sorted(sorted(c) for c in comps) == [[0, 1, 2], [3, 4]]
    assert engels_graph_clusters(w, top_k=2, min_cos=0.5, max_size=3) == [[3, 4]]
    assert engels_graph_clusters(w, top_k=2, min_cos=0.999) == []


def test_plot_planes_by_token_draws_one_panel_per_plane_coloured_by_token():
    rng = np.random.default_rng(6)
    coords = rng.standard_normal((90, 5))
    labels = np.array(["Monday", "Tuesday", "Friday"] * 30)
    fig = plot_planes_by_token(coords, labels, planes=[(1, 2), (2, 3), (1, 3)])
    axes = [a for a in fig.axes if a.collections]
    assert len(axes) == 3
    assert all(len(a.collections) == 3 for a in axes)  # one scatter per token


def test_separability_null_reflects_the_small_sample_bias():
    """With 150 points in 100 bins the plug-in MI of independent coordinates is far above 0; the null
    (coordinates decoupled by a permutation at the best angle) sits there too, so independent data are
    not called irreducible, while a circle of the same size stands well above its null."""
    from evals.geometry import separability_null

    rng = np.random.default_rng(7)
    indep = rng.standard_normal((150, 2)) * np.array([2.0, 1.0])
    s = separability_index(indep)[0]
    assert s > 0.15  # the bias: true MI is 0
    res = separability_null(indep, shuffles=60, seed=0)
    assert res["null_mean"] > 0.15 and res["p_value"] > 0.05
    circ = _circle(150, seed=8)
    rc = separability_null(circ, shuffles=60, seed=0)
    assert rc["separability"] > rc["null_95"] and rc["p_value"] < 0.05
