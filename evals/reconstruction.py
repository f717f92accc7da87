"""Reconstruction metrics on activations, accumulated batch by batch in constant memory.

Definitions (x_t: one token's activation, x̂_t its reconstruction, f_t its feature activations,
means over the N evaluated tokens):

- ``fvu = Σ_t |x_t - x̂_t|² / Σ_t |x_t - μ|²`` with ``μ = mean_t x_t`` (a vector, over all N
  tokens): a ratio of sums, the fraction of the activations' variance the SAE leaves unexplained;
  ``explained_variance = 1 - fvu``. High-norm tokens weigh in proportion to their squared error.
- SAEBench (sae-bench 0.6.0, ``evals/core/main.py``) reports two other numbers, given here beside
  ours so the two can be compared (it computes them over one batch of 16 prompts x 128 tokens by
  default; we over the same evaluated tokens as ours, cut into blocks of ``SAEBENCH_BATCH_TOKENS``
  consecutive rows):

  - ``saebench_explained_variance_legacy`` (its ``explained_variance_legacy``, the definition it
    used until March 2025): ``mean_t [1 - |x_t - x̂_t|² / |x_t - μ_b|²]`` with ``μ_b`` the
    per-dimension mean of the token's batch ``b``: a mean of per-token ratios, so a low-norm token
    with a poor reconstruction weighs as much as a high-norm one, and ``μ`` is a batch's mean;
  - ``saebench_explained_variance`` (its ``explained_variance``):
    ``1 - E_t|x_t - x̂_t|² / (E_t|x_t|² - (E_{t,d} x_td²)²)``. Its commit 7fb3ed3 meant the
    denominator to be ``E_t|x_t - μ|²`` (= ours); the batched rewrite (3b58c67) subtracts the
    square of the mean *squared* entry instead of ``|μ|²``, a quantity in units of x⁴: its value
    depends on the activations' scale, and once their RMS norm exceeds d_model the denominator
    turns negative and the score exceeds 1.

  Its ``mse`` is ``mean_t |x_t - x̂_t|² / (tokens in the batch)``; ours below is the plain mean.
- ``mse``: mean over tokens and dimensions of (x - x̂)².
- ``cossim = mean_t cos(x_t, x̂_t)``, ``l2_ratio = mean_t |x̂_t| / |x_t|``.
- ``relative_reconstruction_bias = E|x̂|² / E<x, x̂>`` (Eq. 10 of arXiv 2404.16014): 1 when the
  reconstruction is not systematically shrunk (< 1) or inflated (> 1).
- ``l0 = mean_t #{f : f_t ≠ 0}`` (with its distribution), ``l1 = mean_t Σ_f f_t``.

FVU's interval (``intervals.fvu``, and ``explained_variance`` from it): a percentile bootstrap
95% interval resampling blocks of ``FVU_BLOCK_ROWS`` consecutive rows (the cache stores rows in
context order, so a block is about one context; tokens of a context are correlated, so blocks
rather than single tokens are the honest unit). Each block keeps its SSE, Σ|x|², Σx and row count;
a resample's FVU is recomputed from the drawn blocks' sums, its own mean included. Past
``MAX_BLOCKS`` blocks, neighbours merge pairwise (the block doubles), so the state stays bounded.

Sums are kept in float64, so the variance from ``Σ|x|² - N|μ|²`` loses nothing that matters at
activation scales, and the state is O(d_model + F) whatever the number of tokens (plus one block
of ``SAEBENCH_BATCH_TOKENS`` rows for the legacy variant's batch mean).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from evals.intervals import DEFAULT_LEVEL, DEFAULT_RESAMPLES, Interval, percentile_interval, resample_counts

# SAEBench's default batch for its variance metrics: 16 prompts of 128 tokens.
SAEBENCH_BATCH_TOKENS = 16 * 128
# FVU's bootstrap unit: blocks of consecutive rows (about one context), at most MAX_BLOCKS of them.
FVU_BLOCK_ROWS = 128
MAX_BLOCKS = 4096


@dataclass
class ReconstructionStats:
    """Running sums for the reconstruction metrics; `update` per batch, `summary` at the end."""

    d_in: int
    num_features: int
    n: int = 0
    sse: float = 0.0
    sum_sq: float = 0.0
    cos_sum: float = 0.0
    ratio_sum: float = 0.0
    xhat_sq: float = 0.0
    dot: float = 0.0
    l1_sum: float = 0.0
    legacy_sum: float = 0.0  # SAEBench's legacy explained variance: sum over tokens of 1 - rss_t / tss_t
    legacy_n: int = 0
    sum_x: Tensor = field(init=False)
    l0_hist: Tensor = field(init=False)
    _block_x: list[Tensor] = field(init=False, repr=False)  # rows of the open SAEBench block
    _block_rss: list[Tensor] = field(init=False, repr=False)
    block_rows: int = FVU_BLOCK_ROWS  # rows per bootstrap block (doubles past MAX_BLOCKS)
    _blocks: list[list[Any]] = field(init=False, repr=False)  # closed blocks: [sse, sum_sq, n, sum_x]
    _open: list[Any] = field(init=False, repr=False)  # the block being filled

    def __post_init__(self) -> None:
        self.sum_x = torch.zeros(self.d_in, dtype=torch.float64)
        self.l0_hist = torch.zeros(self.num_features + 1, dtype=torch.int64)
        self._block_x, self._block_rss = [], []
        self._blocks = []
        self._open = self._empty_block()

    def _empty_block(self) -> list[Any]:
        return [0.0, 0.0, 0, torch.zeros(self.d_in, dtype=torch.float64)]

    def _add_to_fvu_blocks(self, x: Tensor, rss: Tensor) -> None:
        """Per-block sums for FVU's interval (see the module docstring), in row order."""
        sq = x.pow(2).sum(1)
        start = 0
        while start < x.shape[0]:
            blk = self._open
            take = min(self.block_rows - blk[2], x.shape[0] - start)
            sl = slice(start, start + take)
            blk[0] += float(rss[sl].sum())
            blk[1] += float(sq[sl].sum())
            blk[2] += take
            blk[3] += x[sl].sum(0).cpu()
            start += take
            if blk[2] >= self.block_rows:
                self._blocks.append(blk)
                self._open = self._empty_block()
                if len(self._blocks) >= MAX_BLOCKS:
                    pairs = zip(self._blocks[0::2], self._blocks[1::2])
                    self._blocks = [[a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]] for a, b in pairs]
                    self.block_rows *= 2

    def fvu_interval(self, *, n_resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL,
                     seed: int = 0) -> Interval | None:
        """Bootstrap interval of FVU over the blocks (None before any row)."""
        blocks = self._blocks + ([self._open] if self._open[2] else [])
        if not blocks:
            return None
        sse = np.array([b[0] for b in blocks])
        sq = np.array([b[1] for b in blocks])
        n = np.array([b[2] for b in blocks], dtype=np.float64)
        sx = torch.stack([b[3] for b in blocks]).numpy()

        def fvu(c: np.ndarray) -> np.ndarray:  # c: [m, blocks] draw counts
            s = c @ sx
            with np.errstate(divide="ignore", invalid="ignore"):
                tss = c @ sq - (s * s).sum(1) / (c @ n)
                return np.where(tss > 0, (c @ sse) / tss, np.nan)

        estimate = float(fvu(np.ones((1, len(blocks))))[0])
        stats = np.concatenate([fvu(c) for c in resample_counts(len(blocks), n_resamples, seed)])
        return percentile_interval(estimate, stats, len(blocks), level)

    @torch.no_grad()
    def update(self, x: Tensor, x_hat: Tensor, l0: Tensor, l1: Tensor) -> None:
        """Add a batch: activations `x [B, d]`, reconstructions `x_hat [B, d]`, per-token L0 and L1 `[B]`."""
        x32 = x.float()
        x, x_hat = x.double(), x_hat.double()
        rss = (x - x_hat).pow(2).sum(1)
        self._add_to_blocks(x32, rss)
        self._add_to_fvu_blocks(x, rss)
        self.n += x.shape[0]
        self.sse += float(rss.sum())
        self.sum_sq += float(x.pow(2).sum())
        self.sum_x += x.sum(0).cpu()
        nx, nh = x.norm(dim=1), x_hat.norm(dim=1)
        dot = (x * x_hat).sum(1)
        self.cos_sum += float((dot / (nx * nh).clamp_min(1e-30)).sum())
        self.ratio_sum += float((nh / nx.clamp_min(1e-30)).sum())
        self.xhat_sq += float(nh.pow(2).sum())
        self.dot += float(dot.sum())
        self.l1_sum += float(l1.double().sum())
        self.l0_hist += torch.bincount(l0.long().cpu(), minlength=self.num_features + 1)

    def _add_to_blocks(self, x: Tensor, rss: Tensor) -> None:
        """Cut the stream into blocks of SAEBENCH_BATCH_TOKENS rows whatever the batch sizes given."""
        held = sum(b.shape[0] for b in self._block_x)
        while x.shape[0]:
            take = min(SAEBENCH_BATCH_TOKENS - held, x.shape[0])
            self._block_x.append(x[:take].clone())  # float32 (the cache's dtype or narrower), on x's device
            self._block_rss.append(rss[:take])
            x, rss, held = x[take:], rss[take:], held + take
            if held == SAEBENCH_BATCH_TOKENS:
                total, n = self._legacy_block()
                self.legacy_sum += total
                self.legacy_n += n
                self._block_x, self._block_rss, held = [], [], 0

    def _legacy_block(self) -> tuple[float, int]:
        """Sum over the open block's tokens of 1 - |x_t - x̂_t|² / |x_t - μ_block|², and how many
        (tokens equal to the block mean, e.g. a block of one row, have no ratio and are left out)."""
        if not self._block_x:
            return 0.0, 0
        x = torch.cat(self._block_x).double()
        rss = torch.cat(self._block_rss)
        tss = (x - x.mean(0)).pow(2).sum(1)
        ok = tss > 0
        return float((1 - rss[ok] / tss[ok]).sum()), int(ok.sum())

    def summary(self) -> dict[str, Any]:
        if self.n == 0:
            return {}
        n = self.n
        mean = self.sum_x / n
        total_var = self.sum_sq - n * float(mean.pow(2).sum())
        fvu = self.sse / total_var if total_var > 0 else float("nan")
        # SAEBench 0.6.0's explained_variance: E|x|² minus the square of the mean squared entry
        saebench_var = self.sum_sq / n - (self.sum_sq / (n * self.d_in)) ** 2
        open_sum, open_n = self._legacy_block()  # the last, partial block (summary leaves the state as it is)
        legacy_n = self.legacy_n + open_n
        counts = self.l0_hist.double()
        values = torch.arange(counts.numel(), dtype=torch.float64)
        l0_mean = float((counts * values).sum() / n)
        l0_std = float(((counts * (values - l0_mean).pow(2)).sum() / n).sqrt())
        cdf = counts.cumsum(0) / n
        quantiles = {f"p{int(q * 100)}": int(torch.searchsorted(cdf, torch.tensor(q, dtype=torch.float64)))
                     for q in (0.01, 0.1, 0.5, 0.9, 0.99)}
        return {
            "tokens": n,
            "fvu": fvu,
            "explained_variance": 1.0 - fvu,
            "saebench_explained_variance": 1.0 - (self.sse / n) / saebench_var if saebench_var else float("nan"),
            "saebench_explained_variance_legacy": ((self.legacy_sum + open_sum) / legacy_n if legacy_n
                                                   else float("nan")),
            "mse": self.sse / (n * self.d_in),
            "cossim": self.cos_sum / n,
            "l2_ratio": self.ratio_sum / n,
            "relative_reconstruction_bias": self.xhat_sq / self.dot if self.dot else float("nan"),
            "l0": l0_mean,
            "l0_std": l0_std,
            "l0_quantiles": quantiles,
            "l0_max": int(torch.nonzero(counts).max()) if counts.sum() else 0,
            "l1": self.l1_sum / n,
            "intervals": self._intervals(),
        }

    def _intervals(self) -> dict[str, dict[str, Any]]:
        iv = self.fvu_interval()
        if iv is None:
            return {}
        how = {"resampled": f"blocks of {self.block_rows} consecutive rows (about a context each)",
               "method": "percentile bootstrap", "resamples": DEFAULT_RESAMPLES}
        ev = Interval(1.0 - iv.estimate, 1.0 - iv.high, 1.0 - iv.low, iv.n, iv.level)
        return {"fvu": {**iv.to_dict(), **how}, "explained_variance": {**ev.to_dict(), **how}}
