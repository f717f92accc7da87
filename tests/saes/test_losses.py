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
    # Zipf shares by rank (feature 1 first), the first capped at the even share k/F = 0.125
    torch.testing.assert_close(t, torch.tensor([0.5 / h / 4, 0.125, 0.5 / h / 2, 0.5 / h / 3]))
    assert 0.5 / h > 0.125  # the cap is exercised
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


def _head_heavy_usage(f: int, k: float, head: int, head_rate: float, dead: int, seed: int) -> torch.Tensor:
    """Running firing rates summing to k: `head` features at `head_rate`, `dead` never fired, and the
    rest of the budget spread unevenly (exponential weights) over the remaining features."""
    g = torch.Generator().manual_seed(seed)
    usage = torch.zeros(f)
    usage[:head] = head_rate
    rest = torch.arange(head, f - dead)
    w = torch.empty(rest.numel()).exponential_(generator=g)
    usage[rest] = (k - head * head_rate) * w / w.sum()
    return usage[torch.randperm(f, generator=g)]  # ids carry no order


@pytest.mark.parametrize("exponent", [0.7, 1.0, 1.5])
def test_aux_zipf_never_flags_the_most_used_features(exponent):
    """The review's case (k 32, 4608 features, the 45 most used firing on 4.5% of tokens): a feature
    used at least as often as the average feature (k/F) is not under-used, whatever its Zipf rank;
    dead features always are."""
    from saes.losses import underused_features

    f, k = 4608, 32.0
    for seed in range(3):
        usage = _head_heavy_usage(f, k, head=45, head_rate=0.045, dead=20, seed=seed)
        flagged = torch.zeros(f, dtype=torch.bool)
        flagged[underused_features(usage, zipf_target_rates(usage, k, exponent))] = True
        assert not bool(flagged[usage >= k / f].any()), \
            f"{int(flagged[usage >= k / f].sum())} features used at least k/F flagged under-used"
        assert bool(flagged[usage == 0].all())
        head = usage.topk(45).indices
        assert not bool(flagged[head].any())


def test_zipf_target_rates_are_capped_by_what_the_batch_gives_each_feature():
    usage = torch.rand(100, generator=torch.Generator().manual_seed(0))
    t = zipf_target_rates(usage, k=5.0, exponent=1.0)
    h = sum(1 / r for r in range(1, 101))
    ranks = usage_ranks(usage)
    ref = torch.tensor([min(5.0 / h / (int(r) + 1), 5.0 / 100) for r in ranks])
    torch.testing.assert_close(t, ref.float())
