"""Reconstruction metrics on activations, accumulated batch by batch in constant memory.

Definitions (x_t: one token's activation, x̂_t its reconstruction, f_t its feature activations,
means over the N evaluated tokens):

- ``fvu = Σ_t |x_t - x̂_t|² / Σ_t |x_t - μ|²`` with ``μ = mean_t x_t`` (a vector): the fraction of
  the activations' variance the SAE leaves unexplained; ``explained_variance = 1 - fvu``.
  SAEBench's core eval subtracts the *scalar* mean of all entries instead of the per-dimension
  mean, which is not the variance of the activations; we use the per-dimension mean.
- ``mse``: mean over tokens and dimensions of (x - x̂)².
- ``cossim = mean_t cos(x_t, x̂_t)``, ``l2_ratio = mean_t |x̂_t| / |x_t|``.
- ``relative_reconstruction_bias = E|x̂|² / E<x, x̂>`` (Eq. 10 of arXiv 2404.16014): 1 when the
  reconstruction is not systematically shrunk (< 1) or inflated (> 1).
- ``l0 = mean_t #{f : f_t ≠ 0}`` (with its distribution), ``l1 = mean_t Σ_f f_t``.

Sums are kept in float64, so the variance from ``Σ|x|² - N|μ|²`` loses nothing that matters at
activation scales, and the state is O(d_model + F) whatever the number of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


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
    sum_x: Tensor = field(init=False)
    l0_hist: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.sum_x = torch.zeros(self.d_in, dtype=torch.float64)
        self.l0_hist = torch.zeros(self.num_features + 1, dtype=torch.int64)

    @torch.no_grad()
    def update(self, x: Tensor, x_hat: Tensor, l0: Tensor, l1: Tensor) -> None:
        """Add a batch: activations `x [B, d]`, reconstructions `x_hat [B, d]`, per-token L0 and L1 `[B]`."""
        x, x_hat = x.double(), x_hat.double()
        self.n += x.shape[0]
        self.sse += float((x - x_hat).pow(2).sum())
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

    def summary(self) -> dict[str, Any]:
        if self.n == 0:
            return {}
        n = self.n
        mean = self.sum_x / n
        total_var = self.sum_sq - n * float(mean.pow(2).sum())
        fvu = self.sse / total_var if total_var > 0 else float("nan")
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
            "mse": self.sse / (n * self.d_in),
            "cossim": self.cos_sum / n,
            "l2_ratio": self.ratio_sum / n,
            "relative_reconstruction_bias": self.xhat_sq / self.dot if self.dot else float("nan"),
            "l0": l0_mean,
            "l0_std": l0_std,
            "l0_quantiles": quantiles,
            "l0_max": int(torch.nonzero(counts).max()) if counts.sum() else 0,
            "l1": self.l1_sum / n,
        }
