"""Geometric median of a sample: the decoder bias TopK SAEs start from (Gao et al. 2024).

The point minimising the sum of Euclidean distances is robust to the heavy-tailed outliers of
residual-stream activations (a handful of tokens with huge norms pull the mean away), so it
is a better centre for the encoder's input x - b_dec.
"""

from __future__ import annotations

import torch
from torch import Tensor


def geometric_median(points: Tensor, *, max_iter: int = 200, tol: float = 1e-6, eps: float = 1e-8) -> Tensor:
    """Weiszfeld's iteration (with the Vardi-Zhang guard against landing on a data point).

    Each step is the average of the points weighted by 1 / distance; it decreases the objective
    monotonically. Computed in float64; stops when the relative objective change is below `tol`.
    """
    if points.dim() != 2 or points.shape[0] == 0:
        raise ValueError(f"geometric_median needs points [n >= 1, d]; got {tuple(points.shape)}")
    p = points.double()
    y = p.mean(0)
    prev = float("inf")
    for _ in range(max_iter):
        dist = (p - y).norm(dim=1)
        obj = float(dist.sum())
        if prev - obj <= tol * max(obj, eps):
            break
        prev = obj
        at_point = dist < eps
        w = 1.0 / dist.clamp_min(eps)
        w = torch.where(at_point, torch.zeros_like(w), w)
        if float(w.sum()) == 0.0:  # every point sits at y: it is the median
            break
        t = (w[:, None] * p).sum(0) / w.sum()
        n_at = int(at_point.sum())
        if n_at:
            # Vardi-Zhang: move from the data point only as far as the pull of the others allows.
            r = ((w[:, None] * (p - y)).sum(0)).norm()
            gamma = min(1.0, n_at / max(float(r), eps))
            t = (1 - gamma) * t + gamma * y
        y = t
    return y.to(points.dtype)


def sum_of_distances(points: Tensor, y: Tensor) -> Tensor:
    """The objective the geometric median minimises."""
    return (points.double() - y.double()).norm(dim=1).sum()
