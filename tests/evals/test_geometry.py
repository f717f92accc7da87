"""Feature geometry against hand-written formulas on small inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evals.geometry import (angular_similarity, cluster_agreement, covariance_spectrum, feature_map, geometric_clusters,
                            lobes_vs_geometry, pca_2d, phi_coefficients, power_law_slope)


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


def test_feature_map_and_pca_shapes():
    w = torch.randn(80, 12, generator=torch.Generator().manual_seed(4))
    xy = feature_map(w)
    assert xy.shape == (80, 2) and xy.min() >= 0 and xy.max() <= 1
    pts = np.random.default_rng(0).normal(size=(50, 5)) * np.array([5, 2, 0.1, 0.1, 0.1])
    coords, ratio = pca_2d(pts)
    assert coords.shape == (50, 2) and ratio.sum() > 0.95
