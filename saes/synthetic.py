"""Activations with a known answer: sparse non-negative combinations of a random dictionary.

Used by the tests (does each architecture recover the true features?) and handy for checking a
new architecture or hyper-parameter before spending time on a real cache.
"""

from __future__ import annotations

import torch
from torch import Tensor


def random_dictionary(num_features: int, d: int, *, seed: int = 0) -> Tensor:
    """`[num_features, d]` random unit rows."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(num_features, d, generator=g)
    return w / w.norm(dim=1, keepdim=True)


def sparse_activations(dictionary: Tensor, n: int, *, active: float = 4.0, seed: int = 0, noise: float = 0.0,
                       zipf_exponent: float = 0.0, bias: Tensor | None = None) -> Tensor:
    """`[n, d]` tokens x = sum_f c_f dictionary[f] (+ bias + noise).

    Each feature is present independently with probability p_f, `active` on average per token
    (uniform p_f, or Zipf-distributed when `zipf_exponent` > 0, capped at 0.9); coefficients are
    Uniform(0.5, 1.5), so every present feature is clearly visible.
    """
    f, d = dictionary.shape
    g = torch.Generator().manual_seed(seed + 1)
    if zipf_exponent > 0:
        r = torch.arange(1, f + 1, dtype=torch.float64).pow(-zipf_exponent)
        p = (active * r / r.sum()).clamp(max=0.9).float()
    else:
        p = torch.full((f,), active / f)
    parts = []
    for start in range(0, n, 4096):  # in chunks: a [n, F] presence matrix would not fit for large F
        m = min(4096, n - start)
        present = torch.rand(m, f, generator=g) < p
        coef = (torch.rand(m, f, generator=g) + 0.5) * present
        parts.append(coef @ dictionary)
    x = torch.cat(parts)
    if bias is not None:
        x = x + bias
    if noise > 0:
        x = x + noise * torch.randn(n, d, generator=g)
    return x


def mean_max_cosine(learned: Tensor, true: Tensor) -> float:
    """For each true feature the best cosine with any learned decoder row, averaged over true features."""
    a = learned / learned.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = true / true.norm(dim=1, keepdim=True)
    return float((b @ a.t()).max(dim=1).values.mean())
