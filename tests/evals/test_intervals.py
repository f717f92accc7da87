"""Bootstrap intervals cover the true value at about the stated rate on draws from known laws.

Coverage is counted over 200 independent synthetic samples; a 95% interval should cover in about
190 of them (binomial sd ~3), so [0.90, 0.99] leaves room for the percentile bootstrap's known
small-sample undercoverage while failing an implementation that does not resample (width 0,
coverage ~0) or that resamples a ratio's numerator and denominator independently (far too wide,
coverage ~1).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from evals import Interval, bootstrap_interval, paired_bootstrap_interval, ratio_interval
from workbench.errors import WorkbenchError

REPS = 200


def _coverage(draw, interval, truth: float) -> float:
    rng = np.random.default_rng(1234)
    hits = 0
    for rep in range(REPS):
        iv = interval(draw(rng), rep)
        hits += iv.low <= truth <= iv.high
    return hits / REPS


def test_mean_of_exponential_is_covered_at_the_stated_rate():
    # Exponential(scale 2): true mean 2, skewed, n=80.
    cov = _coverage(lambda rng: rng.exponential(2.0, size=80),
                    lambda x, rep: bootstrap_interval(x, n_resamples=500, seed=rep), 2.0)
    assert 0.90 <= cov <= 0.99, cov


def test_accuracy_of_bernoulli_is_covered_at_the_stated_rate():
    # Probing accuracy: 0/1 per test example, true accuracy 0.8, n=200.
    cov = _coverage(lambda rng: (rng.random(200) < 0.8).astype(float),
                    lambda x, rep: bootstrap_interval(x, n_resamples=500, seed=rep), 0.8)
    assert 0.90 <= cov <= 0.99, cov


def _ratio_draw(rng):
    # Per-context loss-like sums: the denominator varies a lot between contexts, the numerator
    # follows it closely (as CE_abl - CE_sae follows CE_abl - CE_clean). True ratio of expectations:
    # E[0.9 d + e] / E[d] = 0.9.
    d = rng.lognormal(mean=3.0, sigma=0.8, size=120)
    return 0.9 * d + rng.normal(0.0, 1.0, size=120), d


def test_ratio_of_sums_is_covered_at_the_stated_rate():
    cov = _coverage(_ratio_draw,
                    lambda nd, rep: ratio_interval(nd[0], nd[1], n_resamples=500, seed=rep), 0.9)
    assert 0.90 <= cov <= 0.99, cov


def test_paired_form_agrees_with_the_ratio_form():
    num, den = _ratio_draw(np.random.default_rng(0))
    a = ratio_interval(num, den, seed=3)
    b = paired_bootstrap_interval([num, den], lambda n, d: n.sum() / d.sum(), seed=3)
    assert a.estimate == pytest.approx(num.sum() / den.sum())
    assert b.estimate == pytest.approx(a.estimate)
    # Different random streams, same law: the ends agree to within bootstrap noise.
    assert abs(a.low - b.low) < 0.3 * (a.high - a.low)
    assert abs(a.high - b.high) < 0.3 * (a.high - a.low)


def test_joint_resampling_is_much_narrower_than_independent_resampling():
    num, den = _ratio_draw(np.random.default_rng(0))
    joint = ratio_interval(num, den, seed=0)
    rng = np.random.default_rng(0)
    indep = [num[rng.integers(0, num.size, num.size)].sum()
             / den[rng.integers(0, den.size, den.size)].sum() for _ in range(1000)]
    lo, hi = np.quantile(indep, [0.025, 0.975])
    assert (joint.high - joint.low) < 0.25 * (hi - lo)


def test_interval_shrinks_like_one_over_root_n():
    rng = np.random.default_rng(5)
    small = bootstrap_interval(rng.normal(size=100))
    large = bootstrap_interval(rng.normal(size=10_000))
    ratio = (small.high - small.low) / (large.high - large.low)
    assert 7 < ratio < 13  # sqrt(100) = 10


def test_same_seed_same_interval_and_round_trip():
    x = np.arange(30.0)
    a, b = bootstrap_interval(x, seed=7), bootstrap_interval(x, seed=7)
    assert a == b and a.n == 30 and a.level == 0.95
    assert Interval.from_dict(a.to_dict()) == a
    assert a.low < a.estimate < a.high


def test_custom_statistic_and_2d_rows():
    rows = np.random.default_rng(0).normal(size=(50, 3))
    iv = bootstrap_interval(rows, lambda r: float(r[:, 0].mean() - r[:, 1].mean()), n_resamples=200)
    assert iv.low < iv.estimate < iv.high


def test_bad_arguments_are_one_clear_error():
    with pytest.raises(WorkbenchError, match="at least one sample"):
        bootstrap_interval([])
    with pytest.raises(WorkbenchError, match="level"):
        bootstrap_interval([1.0, 2.0], level=95)
    with pytest.raises(WorkbenchError, match="numerator"):
        ratio_interval([1.0, 2.0], [1.0])


# --- the spliced scores' intervals: per-context sums, contexts resampled -----------------------

def test_spliced_intervals_resample_the_contexts_own_losses(tiny_lm, tiny_cache) -> None:
    """The interval is the bootstrap of the per-context sums: rebuilt here by scoring each context
    alone (its CE and KL sums = the mean times its scored tokens) and bootstrapping those."""
    from evals import cache_contexts, spliced_losses
    from evals.splice import VARIANTS
    from harvesting import CacheReader

    from .conftest import HOOK, make_sae

    batches = list(cache_contexts(CacheReader(tiny_cache), HOOK, heldout_fraction=0.1, max_contexts=6,
                                  batch_contexts=3))
    sae = make_sae(seed=3)
    got = spliced_losses(tiny_lm, sae, HOOK, batches, error_term=False, n_resamples=400, seed=11)
    sums = {v: [] for v in ("clean", "sae", "zero")}
    kls = {v: [] for v in ("sae", "zero")}
    for cb in batches:
        for j in range(cb.tokens.shape[0]):
            one = type(cb)(cb.tokens[j:j + 1], cb.keep[j:j + 1], cb.special_ids)
            r = spliced_losses(tiny_lm, sae, HOOK, [one], error_term=False)
            for v in sums:
                sums[v].append(r[f"ce_{v}"] * r["ce_tokens"])
            for v in kls:
                kls[v].append(r[f"kl_{v}"] * r["kl_tokens"])
    s = {v: np.array(x) for v, x in sums.items()}
    k = {v: np.array(x) for v, x in kls.items()}
    ce = ratio_interval(s["zero"] - s["sae"], s["zero"] - s["clean"], n_resamples=400, seed=11)
    kl = ratio_interval(k["zero"] - k["sae"], k["zero"], n_resamples=400, seed=11)
    iv = got["intervals"]
    assert iv["ce_loss_score"]["n"] == 6 and iv["ce_loss_score"]["resampled"] == "contexts"
    assert iv["ce_loss_score"]["estimate"] == pytest.approx(got["ce_loss_score"], rel=1e-9)
    for name, ref in (("ce_loss_score", ce), ("kl_div_score", kl)):
        assert iv[name]["low"] == pytest.approx(ref.low, rel=1e-5), name
        assert iv[name]["high"] == pytest.approx(ref.high, rel=1e-5), name
        assert iv[name]["low"] < got[name] < iv[name]["high"], name
    assert got["input_tokens"] == 6 * 32 and got["context_length"] == 32
    assert "sae" in VARIANTS


# --- FVU's interval: blocks of consecutive rows --------------------------------------------------

def _recon_stats(rng, rows: int, block_rows: int):
    import torch

    from evals.reconstruction import ReconstructionStats

    x = torch.from_numpy(rng.normal(0.0, 1.0, size=(rows, 3)) + 5.0)  # mean 5: FVU subtracts it
    e = torch.from_numpy(rng.normal(0.0, 0.5, size=(rows, 3)))
    st = ReconstructionStats(3, 4, block_rows=block_rows)
    for lo in range(0, rows, 300):  # batches that do not align with the blocks
        sl = slice(lo, lo + 300)
        n = x[sl].shape[0]
        st.update(x[sl], x[sl] - e[sl], torch.zeros(n, dtype=torch.long), torch.zeros(n))
    return st


def test_fvu_interval_is_covered_at_the_stated_rate():
    # x ~ N(5, I), x_hat = x - e, e ~ N(0, 0.25 I): FVU = E|e|^2 / E|x - mu|^2 = 0.25.
    rng = np.random.default_rng(99)
    hits = 0
    for rep in range(REPS):
        iv = _recon_stats(rng, 1280, 8).fvu_interval(n_resamples=300, seed=rep)
        hits += iv.low <= 0.25 <= iv.high
    assert 0.90 <= hits / REPS <= 0.99, hits / REPS


def test_fvu_interval_in_the_summary_and_bounded_blocks(monkeypatch):
    import evals.reconstruction as rec

    monkeypatch.setattr(rec, "MAX_BLOCKS", 8)
    st = _recon_stats(np.random.default_rng(0), 1000, 16)  # 62 blocks of 16 -> merged down past 8
    assert st.block_rows >= 128 and len(st._blocks) < 8
    summ = st.summary()
    iv = summ["intervals"]["fvu"]
    assert iv["estimate"] == pytest.approx(summ["fvu"], rel=1e-9)
    assert iv["low"] < summ["fvu"] < iv["high"]
    ev = summ["intervals"]["explained_variance"]
    assert ev["low"] == pytest.approx(1 - iv["high"]) and ev["estimate"] == pytest.approx(summ["explained_variance"])


# --- probing accuracy: test examples resampled within each task ---------------------------------

def test_mean_accuracy_over_tasks_is_covered_at_the_stated_rate():
    from evals.intervals import stratified_mean_interval

    acc = [0.6, 0.75, 0.9]  # three tasks of 100 test examples: true mean accuracy 0.75
    rng = np.random.default_rng(7)
    hits = 0
    for rep in range(REPS):
        groups = [(rng.random(100) < a).astype(float) for a in acc]
        iv = stratified_mean_interval(groups, n_resamples=400, seed=rep)
        hits += iv.low <= 0.75 <= iv.high
    assert 0.90 <= hits / REPS <= 0.99, hits / REPS


def test_stratified_ratio_is_covered_at_the_stated_rate_and_pairs_its_draws():
    """Three concepts of 24 prompts; method A gains 0.8x method B on average, with prompt-level noise
    shared by both (a hard prompt is hard for each). The 95% interval of mean(A)/mean(B) over concepts
    should cover 0.8 about 95% of the time; a method that is exactly 0.8x B on every prompt has a
    zero-width interval, which only a draw shared by numerator and denominator gives."""
    from evals.intervals import stratified_mean_interval, stratified_ratio_interval

    rng = np.random.default_rng(3)
    hits = 0
    for rep in range(REPS):
        shared = [rng.normal(0, 1.0, 24) for _ in range(3)]
        b = [1.0 + c + s for c, s in zip((0.0, 0.5, 1.0), shared)]
        a = [0.8 * (1.0 + c) + 0.8 * s + rng.normal(0, 0.3, 24) for c, s in zip((0.0, 0.5, 1.0), shared)]
        iv = stratified_ratio_interval(a, b, n_resamples=400, seed=rep)
        hits += iv.low <= 0.8 <= iv.high
    assert 0.88 <= hits / REPS <= 0.995, hits / REPS
    exact = stratified_ratio_interval([0.8 * g for g in b], b, n_resamples=400)
    assert exact.low == pytest.approx(0.8) and exact.high == pytest.approx(0.8)
    assert exact.estimate == pytest.approx(0.8) and exact.n == 72
    # the draws are stratified_mean_interval's: with numerators of 1 every resampled ratio is 1 / that
    # resample's denominator mean, so the ends are the reciprocals of its ends (401 resamples put both
    # 2.5% and 97.5% quantiles on order statistics, so no interpolation blurs the identity)
    den = stratified_mean_interval(b, n_resamples=401, seed=5)
    inv = stratified_ratio_interval([np.ones_like(g) for g in b], b, n_resamples=401, seed=5)
    assert inv.low == pytest.approx(1 / den.high) and inv.high == pytest.approx(1 / den.low)


def test_sparse_probing_reports_accuracy_intervals_from_its_test_examples():
    """Every accuracy sparse probing reports carries a percentile-bootstrap interval over its test examples."""
    from evals.probing import sparse_probing

    rng = np.random.default_rng(0)
    labels = ["a"] * 200 + ["b"] * 200
    raw = rng.normal(size=(400, 6))
    raw[:200, 0] += 0.8  # class a is separable along dimension 0, noisily
    feats = np.maximum(raw, 0)
    res = sparse_probing(raw, feats, labels, max_per_class=200, seed=0)
    for key, est in res["mean"].items():
        iv = res["intervals"]["mean"][key]
        assert iv["estimate"] == pytest.approx(est) and iv["n"] == res["test_documents"]
        assert iv["low"] <= est <= iv["high"] and iv["high"] - iv["low"] > 0
        # a 95% interval of an accuracy on n examples is about 4 standard errors wide
        se = math.sqrt(est * (1 - est) / res["test_documents"])
        if 0.05 < est < 0.95:
            assert 2.5 * se < iv["high"] - iv["low"] < 6 * se, (key, iv, se)
