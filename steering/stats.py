"""Activation statistics that give steering coefficients their units.

A raw coefficient means nothing across features (one fires at 0.5, another at 30) or across
hook points (residual norms grow with depth). So coefficients can be given in units of a
feature's typical activation (its max, or its mean when active: AxBench uses max) or of the
hook's mean activation norm; mean ablation needs each feature's mean. All of it is measured here
on text the user chooses (neutral text by default), in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from steering.reading import chunks, hook_activations


@dataclass
class FeatureStats:
    """Per feature `[F]`: max, mean when active, mean over all tokens, firing rate; hook mean norm."""

    max: Tensor
    mean_active: Tensor
    mean: Tensor
    density: Tensor
    mean_norm: float
    n_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {"mean_norm": self.mean_norm, "n_tokens": self.n_tokens}


def stats_from_activations(acts: Tensor, sae: Any = None, batch_size: int = 4096) -> FeatureStats:
    """Statistics of `acts [tokens, d]` at the SAE's hook (hook norm only when `sae` is None)."""
    n = acts.shape[0]
    mean_norm = float(acts.norm(dim=-1).mean()) if n else 0.0
    if sae is None:
        z = torch.zeros(0)
        return FeatureStats(z, z, z, z, mean_norm, n)
    f = sae.num_features
    mx = torch.zeros(f)
    total = torch.zeros(f, dtype=torch.float64)
    fired = torch.zeros(f, dtype=torch.float64)
    w = sae.W_dec
    with torch.no_grad():
        for sl in chunks(n, batch_size):
            codes = sae.encode(acts[sl].to(device=w.device, dtype=w.dtype))
            vals, cols = codes.vals.detach().float().cpu(), codes.cols.cpu()
            mx = torch.maximum(mx, torch.zeros(f).scatter_reduce(0, cols, vals, "amax"))
            total.index_add_(0, cols, vals.double())
            fired.index_add_(0, cols, (vals > 0).double())
    mean_active = torch.where(fired > 0, total / fired.clamp_min(1), torch.zeros_like(total)).float()
    return FeatureStats(mx, mean_active, (total / max(n, 1)).float(), (fired / max(n, 1)).float(), mean_norm, n)


def measure_stats(lm: Any, texts: list[str], hook: str, sae: Any = None, max_tokens: int = 128) -> FeatureStats:
    """Statistics over every token (BOS excluded) of `texts` (each cut at `max_tokens`), unsteered model."""
    return stats_from_activations(hook_activations(lm, texts, hook, read="all", max_tokens=max_tokens), sae)
