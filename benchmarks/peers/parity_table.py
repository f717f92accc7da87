"""The parity table: one metric per row, ours beside SAEBench's, the difference, its tolerance, a verdict.

Pure logic (no model, no venv), so tests check it on given numbers. A row either compares
(`tolerance` set: "ok" when |ours - SAEBench| <= tolerance, else "DIFF") or only shows two numbers
that differ by definition (`tolerance` None: "definition", with the reason saying which
definition each side uses; the like-for-like row sits next to it). Each tolerance carries its
reason: where the two computations legitimately part (two implementations of the same float32
model, summation order, batch-weighted vs token-weighted means).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    metric: str
    ours: float | None
    theirs: float | None
    tolerance: float | None  # None: shown side by side, not compared (a definition difference)
    reason: str
    relative: bool = False  # tolerance as a fraction of |SAEBench's value|

    @property
    def diff(self) -> float | None:
        if self.ours is None or self.theirs is None:
            return None
        return abs(self.ours - self.theirs)

    @property
    def allowed(self) -> float | None:
        if self.tolerance is None or self.theirs is None:
            return None
        return self.tolerance * abs(self.theirs) if self.relative else self.tolerance

    @property
    def verdict(self) -> str:
        if self.ours is None or self.theirs is None:
            return "missing"
        if math.isnan(self.ours) or math.isnan(self.theirs):
            return "ok" if math.isnan(self.ours) and math.isnan(self.theirs) else "DIFF"
        if self.tolerance is None:
            return "definition"
        return "ok" if self.diff <= self.allowed else "DIFF"  # type: ignore[operator]


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if v == int(v) and abs(v) >= 1:
        return f"{int(v):d}"
    a = abs(v)
    return f"{v:.6g}" if a >= 1e-3 or a == 0 else f"{v:.3e}"


def _tol(r: Row) -> str:
    if r.tolerance is None:
        return "-"
    return f"{r.tolerance:g} rel" if r.relative else f"{r.tolerance:g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # |x| inside a cell would end it


def markdown(rows: list[Row]) -> str:
    """The table as Markdown (RESULTS.md's format)."""
    lines = ["| metric | ours | SAEBench | abs diff | tolerance | verdict | reason |",
             "|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {_cell(r.metric)} | {_num(r.ours)} | {_num(r.theirs)} | {_num(r.diff)} | {_tol(r)} | "
                     f"{r.verdict} | {_cell(r.reason)} |")
    return "\n".join(lines)


def failures(rows: list[Row]) -> list[Row]:
    """Rows beyond their tolerance, or with a value missing."""
    return [r for r in rows if r.verdict in ("DIFF", "missing")]


def saebench_explained_variance(batches: list[tuple[float, float, int]], d_in: int) -> float:
    """SAEBench 0.6.0's `explained_variance` from per-batch sums, in its own aggregation.

    `batches`: (sum of |x - x_hat|^2, sum of |x|^2, tokens) of each of its batches (masked tokens
    only). It averages per-batch means over batches (each batch weighs the same), and its
    "total variance" is E|x|^2 minus the square of the mean squared entry (its `mean_act_per_dimension`
    is the per-dimension mean of x^2, averaged again over dimensions), not E|x - mean x|^2.
    """
    rss = sum(r / n for r, _, n in batches) / len(batches)
    sq = sum(s / n for _, s, n in batches) / len(batches)
    per_dim = sum(s / n / d_in for _, s, n in batches) / len(batches)
    return 1.0 - rss / (sq - per_dim ** 2)
