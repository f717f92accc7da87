"""Percentile-bootstrap intervals for the numbers `sae eval` reports.

A score computed on 756 tokens and one computed on 20k tokens print alike; the interval is what
tells them apart. Every interval here is a *percentile bootstrap*: draw the sampling units (tokens,
contexts, test examples) with replacement ``n_resamples`` times, recompute the statistic on each
draw, and report the ``(1 - level)/2`` and ``(1 + level)/2`` quantiles of those recomputations
around the estimate on the original sample (Efron & Tibshirani 1993, ch. 13).

Ratios of sums (SAEBench's CE loss score ``(CE_abl - CE_sae) / (CE_abl - CE_clean)``, FVU) must
resample numerator and denominator *together*: both come from the same contexts, their errors are
strongly correlated, and drawing them independently would both widen the interval and centre it
wrongly. `ratio_interval` and `paired_bootstrap_interval` resample whole rows across all columns.

    from evals.intervals import bootstrap_interval, ratio_interval
    bootstrap_interval(correct_per_example)            # accuracy, resampling test examples
    ratio_interval(abl - sae, abl - clean)             # CE loss score, per-context loss sums

The sampling unit is the caller's choice and matters: tokens within a context are correlated, so
resampling contexts (clusters) gives the honest, wider interval for per-token metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from workbench.errors import WorkbenchError

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
# Index matrices are drawn in chunks of at most this many entries, so 1000 resamples of 100k
# tokens stay at a few tens of MB instead of 800 MB.
_CHUNK_ENTRIES = 2_000_000


@dataclass(frozen=True)
class Interval:
    """An estimate with its bootstrap interval; ``n`` is the number of resampled units."""

    estimate: float
    low: float
    high: float
    n: int
    level: float = DEFAULT_LEVEL

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "n": self.n,
                "level": self.level}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Interval":
        return cls(float(d["estimate"]), float(d["low"]), float(d["high"]), int(d["n"]),
                   float(d.get("level", DEFAULT_LEVEL)))

    def __str__(self) -> str:
        return f"{self.estimate:.4g} [{self.low:.4g}, {self.high:.4g}]"


def _check(n: int, n_resamples: int, level: float) -> None:
    if n < 1:
        raise WorkbenchError("a bootstrap interval needs at least one sample; got none")
    if n_resamples < 1:
        raise WorkbenchError(f"n_resamples must be at least 1; got {n_resamples}")
    if not 0 < level < 1:
        raise WorkbenchError(f"level must lie strictly between 0 and 1; got {level}")


def _percentiles(estimate: float, stats: np.ndarray, n: int, level: float) -> Interval:
    """Quantiles of the finite resampled statistics (a resample whose ratio has a zero
    denominator is dropped rather than poisoning the interval)."""
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return Interval(float(estimate), float("nan"), float("nan"), n, level)
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return Interval(float(estimate), float(low), float(high), n, level)


def _index_chunks(rng: np.random.Generator, n: int, n_resamples: int):
    per_chunk = max(1, _CHUNK_ENTRIES // max(n, 1))
    done = 0
    while done < n_resamples:
        m = min(per_chunk, n_resamples - done)
        yield rng.integers(0, n, size=(m, n))
        done += m


def resample_counts(n: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0):
    """Yield `[m, n]` matrices of how often each of the `n` units is drawn, m resamples at a time
    (`n_resamples` in all): a statistic that is a function of weighted sums (``counts @ sums``)
    is then recomputed for a whole chunk of resamples with one matrix product."""
    rng = np.random.default_rng(seed)
    for idx in _index_chunks(rng, n, n_resamples):
        m = idx.shape[0]
        flat = (idx + (np.arange(m) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=m * n).reshape(m, n).astype(np.float64)


def percentile_interval(estimate: float, resampled: ArrayLike, n: int,
                        level: float = DEFAULT_LEVEL) -> Interval:
    """The percentile interval of statistics already recomputed on resamples (non-finite ones dropped)."""
    return _percentiles(estimate, np.asarray(resampled, dtype=np.float64).reshape(-1), n, level)


_AXIS_STATISTICS = {np.mean, np.sum, np.median, np.nanmean}


def bootstrap_interval(samples: ArrayLike, statistic: Callable[..., Any] = np.mean, *,
                       n_resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL,
                       seed: int = 0) -> Interval:
    """Percentile-bootstrap interval of ``statistic(samples)``, resampling along axis 0.

    ``samples`` is one value per sampling unit (or one row per unit); ``statistic`` maps such an
    array to a number. np.mean, np.sum and np.median are computed for all resamples at once."""
    x = np.asarray(samples, dtype=np.float64)
    n = int(x.shape[0]) if x.ndim else 0
    _check(n, n_resamples, level)
    rng = np.random.default_rng(seed)
    estimate = float(statistic(x))
    if statistic in _AXIS_STATISTICS and x.ndim == 1:
        stats = np.concatenate([statistic(x[idx], axis=1)
                                for idx in _index_chunks(rng, n, n_resamples)])
    else:
        stats = np.array([float(statistic(x[rng.integers(0, n, size=n)]))
                          for _ in range(n_resamples)])
    return _percentiles(estimate, stats, n, level)


def paired_bootstrap_interval(columns: Sequence[ArrayLike], statistic: Callable[..., Any], *,
                              n_resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL,
                              seed: int = 0) -> Interval:
    """Interval of ``statistic(*columns)`` where row i of every column is one sampling unit.

    Each resample draws one set of row indices and applies it to all columns, so quantities
    measured on the same unit (a context's clean, spliced and ablated losses) stay together."""
    cols = [np.asarray(c, dtype=np.float64) for c in columns]
    if not cols:
        raise WorkbenchError("paired_bootstrap_interval needs at least one column")
    n = int(cols[0].shape[0]) if cols[0].ndim else 0
    if any((c.shape[0] if c.ndim else 0) != n for c in cols):
        raise WorkbenchError("paired_bootstrap_interval: columns differ in length "
                             f"({[c.shape[0] if c.ndim else 0 for c in cols]})")
    _check(n, n_resamples, level)
    rng = np.random.default_rng(seed)
    estimate = float(statistic(*cols))
    stats = np.empty(n_resamples)
    for r in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        stats[r] = float(statistic(*(c[idx] for c in cols)))
    return _percentiles(estimate, stats, n, level)


def stratified_mean_interval(groups: Sequence[ArrayLike], *, n_resamples: int = DEFAULT_RESAMPLES,
                             level: float = DEFAULT_LEVEL, seed: int = 0) -> Interval:
    """Interval of the mean over groups of each group's mean, resampling within each group.

    The form of a probing accuracy averaged over tasks: each task has its own test examples
    (0/1 correct), and a resample redraws every task's test set from itself, so each task keeps
    its size and weight. ``n`` is the total number of resampled units."""
    gs = [np.asarray(g, dtype=np.float64).reshape(-1) for g in groups]
    if not gs or any(g.size == 0 for g in gs):
        raise WorkbenchError("stratified_mean_interval needs at least one group, none of them empty")
    n = int(sum(g.size for g in gs))
    _check(n, n_resamples, level)
    rng = np.random.default_rng(seed)
    estimate = float(np.mean([g.mean() for g in gs]))
    stats = np.zeros(n_resamples)
    for g in gs:
        stats += np.concatenate([g[idx].mean(axis=1) for idx in _index_chunks(rng, g.size, n_resamples)])
    return _percentiles(estimate, stats / len(gs), n, level)


def stratified_ratio_interval(numerators: Sequence[ArrayLike], denominators: Sequence[ArrayLike], *,
                              n_resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL,
                              seed: int = 0) -> Interval:
    """Interval of (mean over groups of each group's numerator mean) / (the same of the denominators).

    The form of one steering method's gain relative to another's, averaged over concepts: each group
    (concept) has its own units (prompts), both methods measured on every unit. A resample redraws each
    group's units from itself, and numerator and denominator share the draw (a hard prompt is hard for
    both; drawing them apart would widen the interval by that shared variance). The draws are those of
    `stratified_mean_interval` with the same seed, so its interval of the denominators alone is the
    denominator of these same resamples. A resample whose denominator is zero is dropped."""
    nums = [np.asarray(g, dtype=np.float64).reshape(-1) for g in numerators]
    dens = [np.asarray(g, dtype=np.float64).reshape(-1) for g in denominators]
    if not nums or len(nums) != len(dens) or any(a.size == 0 or a.size != b.size for a, b in zip(nums, dens)):
        raise WorkbenchError("stratified_ratio_interval needs the same non-empty groups for numerator and "
                             f"denominator; got sizes {[a.size for a in nums]} and {[b.size for b in dens]}")
    n = int(sum(a.size for a in nums))
    _check(n, n_resamples, level)
    rng = np.random.default_rng(seed)
    num_stats, den_stats = np.zeros(n_resamples), np.zeros(n_resamples)
    for a, b in zip(nums, dens):
        idx = np.concatenate(list(_index_chunks(rng, a.size, n_resamples)))
        num_stats += a[idx].mean(axis=1)
        den_stats += b[idx].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = float(np.mean([a.mean() for a in nums]) / np.mean([b.mean() for b in dens]))
        return _percentiles(estimate, num_stats / den_stats, n, level)


def ratio_interval(numerator: ArrayLike, denominator: ArrayLike, *,
                   n_resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL,
                   seed: int = 0) -> Interval:
    """Interval of the ratio of sums ``Σ numerator / Σ denominator``, resampling units jointly.

    The form of SAEBench's CE loss score with per-context loss sums: numerator
    ``abl - sae``, denominator ``abl - clean`` (token counts cancel, every loss is over the same
    tokens). Vectorised; a resample whose denominator sums to zero is dropped."""
    num = np.asarray(numerator, dtype=np.float64).reshape(-1)
    den = np.asarray(denominator, dtype=np.float64).reshape(-1)
    if num.shape != den.shape:
        raise WorkbenchError(f"ratio_interval: numerator has {num.size} values, "
                             f"denominator {den.size}")
    n = int(num.size)
    _check(n, n_resamples, level)
    rng = np.random.default_rng(seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = float(num.sum() / den.sum())
        stats = np.concatenate([num[idx].sum(axis=1) / den[idx].sum(axis=1)
                                for idx in _index_chunks(rng, n, n_resamples)])
    return _percentiles(estimate, stats, n, level)


__all__ = ["DEFAULT_LEVEL", "DEFAULT_RESAMPLES", "Interval", "bootstrap_interval",
           "paired_bootstrap_interval", "percentile_interval", "ratio_interval", "resample_counts",
           "stratified_mean_interval", "stratified_ratio_interval"]
