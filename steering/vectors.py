"""Steering directions from two prompt sets: the baselines SAE features must beat, and the feature pick.

- DiffMean / CAA: `mean(pos) - mean(neg)` of the hook's activations. AxBench found it the strongest
  representation-level baseline, so every SAE result here sits next to it.
- PCA of differences (repeng's `pca_diff`): first principal component of the paired differences
  `pos_i - neg_i` (centred, as repeng's PCA does), signed so positives project higher.
- DiffMean projected onto the SAE's features: `(mean encode(pos) - mean encode(neg)) @ W_dec`,
  optionally keeping only the `top` features with the largest |difference|: the part of the
  mean difference the dictionary can express.
- The concept's SAE feature: the one whose mean activation rises most from negatives to positives.

`read_concept` reads both prompt sets and returns a `VectorSource` with them: the texts and the
token positions pooled, so every vector can say what it was extracted from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from workbench.errors import WorkbenchError


def _check_sets(pos: Tensor, neg: Tensor) -> None:
    if pos.shape[0] == 0 or neg.shape[0] == 0:
        raise WorkbenchError(f"empty prompt set: {pos.shape[0]} positive and {neg.shape[0]} negative examples; "
                             "give at least one of each")
    if pos.shape[1:] != neg.shape[1:]:
        raise WorkbenchError(f"positive {tuple(pos.shape)} and negative {tuple(neg.shape)} activations differ in width")


def diffmean(pos: Tensor, neg: Tensor) -> Tensor:
    """`[d]` mean of positives minus mean of negatives (one row per example)."""
    _check_sets(pos, neg)
    return pos.float().mean(0) - neg.float().mean(0)


def pca_diff(pos: Tensor, neg: Tensor, center: bool = True) -> Tensor:
    """`[d]` unit first principal component of `pos_i - neg_i` (pairs in order), signed toward pos."""
    _check_sets(pos, neg)
    if pos.shape[0] != neg.shape[0]:
        raise WorkbenchError(f"PCA of differences pairs examples: got {pos.shape[0]} positive and "
                             f"{neg.shape[0]} negative; give the same number of each")
    diffs = pos.float() - neg.float()
    x = diffs - diffs.mean(0) if center and diffs.shape[0] > 1 else diffs
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    v = vh[0]
    if (diffs @ v).mean() < 0:
        v = -v
    return v


def sae_code_means(sae: Any, acts: Tensor) -> Tensor:
    """`[F]` mean SAE activation of each feature over the rows of `acts`."""
    w = sae.W_dec
    with torch.no_grad():
        codes = sae.encode(acts.to(device=w.device, dtype=w.dtype))
        total = torch.zeros(sae.num_features, dtype=torch.float64)
        total.index_add_(0, codes.cols.cpu(), codes.vals.detach().double().cpu())
    return (total / max(acts.shape[0], 1)).float()


def feature_contrast(sae: Any, pos: Tensor, neg: Tensor) -> Tensor:
    """`[F]` mean activation on positives minus on negatives."""
    _check_sets(pos, neg)
    return sae_code_means(sae, pos) - sae_code_means(sae, neg)


def diffmean_sae(sae: Any, pos: Tensor, neg: Tensor, top: int | None = None) -> Tensor:
    """DiffMean expressed in the SAE's features: the code difference decoded (no bias)."""
    diff = feature_contrast(sae, pos, neg)
    if top is not None and top < diff.numel():
        keep = diff.abs().topk(top).indices
        sparse = torch.zeros_like(diff)
        sparse[keep] = diff[keep]
        diff = sparse
    return diff.to(sae.W_dec.dtype) @ sae.W_dec.detach().cpu()


def concept_feature(sae: Any, pos: Tensor, neg: Tensor) -> tuple[int, float]:
    """The feature whose mean activation rises most from negatives to positives, and that rise."""
    diff = feature_contrast(sae, pos, neg)
    f = int(diff.argmax())
    return f, float(diff[f])


@dataclass
class VectorSource:
    """Where a vector came from: the hook, the texts on each side and, per text, the token positions read.

    Positions count tokens of the text as the model reads it, the model's prefix (BOS) at 0; `read`
    says how they were pooled (`mean`: every listed position, `last`: the one listed). A vector
    without this record cannot be rebuilt or audited (which prompts? the BOS outlier included?)."""

    hook: str
    read: str
    positive: list[str]
    negative: list[str]
    positive_positions: list[list[int]] = field(default_factory=list)
    negative_positions: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_positions(lm: Any, texts: list[str], read: str = "mean", skip_prefix: bool = True) -> list[list[int]]:
    """Per text, the positions `steering.reading.hook_activations` pools (the same rule: prefix skipped)."""
    from steering.reading import token_ids

    start = len(lm.prefix_ids) if skip_prefix else 0
    out = []
    for t in texts:
        n = len(lm.prefix_ids) + len(token_ids(lm, t))
        pos = list(range(start, n))
        out.append(pos[-1:] if read == "last" else pos)
    return out


def read_concept(lm: Any, positive: list[str], negative: list[str], hook: str, read: str = "mean"
                 ) -> tuple[Tensor, Tensor, VectorSource]:
    """The hook's pooled activations on both sides and the record of what was read: what every
    vector built from them (DiffMean, PCA, a feature pick) should carry."""
    from steering.reading import hook_activations

    pos = hook_activations(lm, positive, hook, read=read)
    neg = hook_activations(lm, negative, hook, read=read)
    src = VectorSource(hook, read, list(positive), list(negative), read_positions(lm, positive, read),
                       read_positions(lm, negative, read))
    return pos, neg, src
