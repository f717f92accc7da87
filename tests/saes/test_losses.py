"""Loss helpers, capacities, schedules and the geometric median, against plain references."""

from __future__ import annotations

import math

import pytest
import torch

from saes.geometric_median import geometric_median, sum_of_distances
from saes.losses import (
    fvu,
    integer_allocation,
    lr_multiplier,
    moment_sums,
    uniform_capacities,
    usage_ranks,
    variance_from_sums,
    zipf_capacities,
    zipf_deficit,
    zipf_target_rates,
)


def test_fvu_and_global_variance_from_sums():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 7, generator=g) * 3 + 10
    x_hat = x + 0.1 * torch.randn(100, 7, generator=g)
    ref = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    torch.testing.assert_close(fvu(x, x_hat), ref)
    # Sums from two halves (two ranks) give the same variance as the whole batch.
    total = moment_sums(x[:37]) + moment_sums(x[37:])
    torch.testing.assert_close(variance_from_sums(total).float(), ((x - x.mean(0)) ** 2).sum(), rtol=1e-6, atol=0)
    assert float(fvu(x, x.mean(0).expand_as(x))) == pytest.approx(1.0)


def test_integer_allocation_sums_caps_and_proportions():
    shares = torch.tensor([100.0, 1, 1, 1, 1])
    a = integer_allocation(shares, total=20, cap=8)
    assert int(a.sum()) == 20 and int(a.max()) <= 8 and a[0] == 8
    assert a[1:].tolist() == [3, 3, 3, 3]
    b = integer_allocation(torch.tensor([3.0, 2, 1]), total=12, cap=100)
    assert b.tolist() == [6, 4, 2]
    c = integer_allocation(torch.ones(4), total=100, cap=10)  # more than fits: every feature full
    assert c.tolist() == [10, 10, 10, 10]


def test_uniform_capacities_rotate_the_remainder():
    caps = [uniform_capacities(10, 23, 1000, step, torch.device("cpu")) for step in range(10)]
    for c in caps:
        assert int(c.sum()) == 23 and set(c.tolist()) <= {2, 3}
    extra = torch.stack(caps).sum(0) - 20
    assert extra.tolist() == [3] * 10, "the spare slots should go round every feature equally"


def test_zipf_capacities_follow_usage_ranks():
    usage = torch.tensor([0.1, 0.5, 0.0, 0.3])
    assert usage_ranks(usage).tolist() == [2, 0, 3, 1]
    caps = zipf_capacities(usage, total=40, cap=100, exponent=1.0)
    assert int(caps.sum()) == 40
    # Most used feature (1) largest, then 3, 0, 2; ratios ~ 1 : 1/2 : 1/3 : 1/4.
    assert caps[1] > caps[3] > caps[0] > caps[2]
    h = sum(1 / r for r in range(1, 5))
    assert abs(int(caps[1]) - 40 / h) <= 1 and abs(int(caps[3]) - 20 / h) <= 1


def test_zipf_targets_and_deficit():
    usage = torch.tensor([0.0, 0.3, 0.05, 0.01])
    t = zipf_target_rates(usage, k=0.5, exponent=1.0)
    h = sum(1 / r for r in range(1, 5))
    torch.testing.assert_close(t, torch.tensor([0.5 / h / 4, 0.5 / h, 0.5 / h / 2, 0.5 / h / 3]))
    d = zipf_deficit(usage, 0.5, 1.0)
    assert float(d[0]) == 1.0 and float(d[1]) == 0.0
    torch.testing.assert_close(d[3], (1 - 0.01 / t[3]).clamp(0, 1))


def test_lr_schedule():
    f = [lr_multiplier(s, 100, 10, 20, "linear") for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[50] == 1.0
    assert f[80] == pytest.approx(1.0) and f[99] == pytest.approx(1 / 20)
    assert all(a >= b for a, b in zip(f[80:], f[81:]))
    c = [lr_multiplier(s, 100, 0, 20, "cosine") for s in range(80, 100)]
    assert c[0] == pytest.approx(1.0) and c[-1] == pytest.approx(0.5 * (1 - math.cos(math.pi / 20)))
    assert lr_multiplier(99, 100, 0, 20, "none") == 1.0


def test_geometric_median_minimises_distance_and_resists_outliers():
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(500, 6, generator=g, dtype=torch.float64)
    pts[:20] += 1000.0  # a few huge outliers, like residual-stream attention sinks
    med = geometric_median(pts)
    obj = float(sum_of_distances(pts, med))
    assert obj < float(sum_of_distances(pts, pts.mean(0)))
    for _ in range(20):  # no small move improves it (it is the minimiser)
        step = 1e-3 * torch.randn(6, generator=g, dtype=torch.float64)
        assert obj <= float(sum_of_distances(pts, med + step)) + 1e-9
    assert float(med.norm()) < 1.0 < float(pts.mean(0).norm())
    one = torch.tensor([[1.0, 2.0]])
    torch.testing.assert_close(geometric_median(one), one[0])
