"""Candidate pools: a few dozen features worth scoring, from what they read and what they write.

- Activation rise: features whose mean activation rises most from the concept's negative texts to
  its positive texts (input features; what the `rise` selector picks the top of).
- Logit lens: features whose decoder row, read through the final norm and the unembedding, puts
  the most probability on the concept's target tokens (output features by the weights alone).
Scoring only the union keeps the forward-pass scores (output, concept output, SAE-TS) cheap.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from steering.vectors import feature_contrast


def rise_candidates(sae: Any, pos: Tensor, neg: Tensor, n: int) -> Tensor:
    """The `n` features with the largest activation rise (positives minus negatives), largest first."""
    diff = feature_contrast(sae, pos, neg)
    return diff.topk(min(n, diff.numel())).indices


@torch.no_grad()
def lens_target_logprob(lm: Any, sae: Any, targets: list[int], chunk: int = 512) -> Tensor:
    """`[F]` log of the probability softmax(W_U . final_norm(d_j)) puts on the target tokens."""
    from evals.features.lens import load_unembedding

    w_u = load_unembedding(lm)
    w = sae.W_dec.detach().float().cpu()
    tgt = torch.tensor(sorted(set(targets)), dtype=torch.long)
    out = torch.empty(w.shape[0])
    for a in range(0, w.shape[0], chunk):
        lp = torch.log_softmax(w[a:a + chunk] @ w_u, -1)
        out[a:a + chunk] = torch.logsumexp(lp[:, tgt], -1)
    return out


def lens_candidates(lm: Any, sae: Any, targets: list[int], n: int) -> Tensor:
    """The `n` features whose logit lens puts the most mass on the target tokens, largest first."""
    s = lens_target_logprob(lm, sae, targets)
    return s.topk(min(n, s.numel())).indices


def candidate_pool(lm: Any, sae: Any, pos: Tensor, neg: Tensor, targets: list[int], n: int) -> Tensor:
    """Union of the top-`n` rise and (with targets) top-`n` logit-lens features, rise ones first."""
    pool = rise_candidates(sae, pos, neg, n).tolist()
    if targets:
        pool += [f for f in lens_candidates(lm, sae, targets, n).tolist() if f not in pool]
    return torch.tensor(pool, dtype=torch.long)
