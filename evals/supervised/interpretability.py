"""Which SAE features mean an attribute: precision, recall and F1 against attribute predicates.

Over prompts (at one site): F = the prompts where the feature is active, A = those where the
predicate holds; P = |A∩F|/|F|, R = |A∩F|/|A|, F1 = 2PR/(P+R) (0 when A∩F is empty). Predicates
(Makelov, Lange, Nanda 2024, section 5): "attribute = x" for each value x, and unions of the
values that score best one by one, up to `max_union` values (10 in the paper), never all of an
attribute's values (that predicate is always true). A feature's score for an attribute is its
best F1 over these predicates.

Two phenomena the paper reports, counted here:
- occlusion: values of an attribute that no feature at F1 >= threshold covers (the paper finds IO
  features but almost no S features: IO occludes S);
- over-splitting: features that are precise (P >= threshold) for one value but recall only part of
  it (0.05 <= R < threshold); the count is the largest number for any one value (Pos split into >= 10).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def precision_recall_f1(active: Tensor, predicate: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """P, R, F1 [F] of each feature (active [N, F] bool) against one predicate ([N] bool)."""
    act = active.float()
    pred = predicate.float()
    inter = pred @ act  # [F]
    n_f = act.sum(0)
    n_a = pred.sum()
    p = torch.where(n_f > 0, inter / n_f.clamp_min(1), torch.zeros_like(inter))
    r = inter / n_a.clamp_min(1)
    f1 = torch.where(inter > 0, 2 * inter / (n_f + n_a), torch.zeros_like(inter))
    return p, r, f1


@dataclass
class AttributeF1:
    """Each feature's best predicate for one attribute."""

    f1: Tensor  # [F]
    precision: Tensor  # [F]
    recall: Tensor  # [F]
    names: list[list[str]]  # the values in each feature's best predicate


@torch.no_grad()
def attribute_f1(active: Tensor, values: Sequence[str], max_union: int = 10) -> AttributeF1:
    """Best F1 of every feature over "attribute in U", U the top-m values by single-value F1, m <= max_union."""
    vals = sorted(set(values))
    index = {v: i for i, v in enumerate(vals)}
    onehot = torch.zeros(len(values), len(vals))
    onehot[torch.arange(len(values)), torch.tensor([index[v] for v in values])] = 1.0
    act = active.float()
    inter = onehot.T @ act  # [V, F]
    n_a = onehot.sum(0)  # [V]
    n_f = act.sum(0)  # [F]
    single = torch.where(inter > 0, 2 * inter / (n_f + n_a[:, None]), torch.zeros_like(inter))
    m = max(1, min(max_union, len(vals) - 1))
    order = single.argsort(0, descending=True)[:m]  # [m, F]
    cum_inter = inter.gather(0, order).cumsum(0)
    cum_a = n_a[order].cumsum(0)
    f1 = torch.where(cum_inter > 0, 2 * cum_inter / (n_f + cum_a), torch.zeros_like(cum_inter))
    best, size = f1.max(0)  # [F]
    feats = torch.arange(act.shape[1])
    inter_b, a_b = cum_inter[size, feats], cum_a[size, feats]
    precision = torch.where(n_f > 0, inter_b / n_f.clamp_min(1), torch.zeros_like(inter_b))
    recall = inter_b / a_b.clamp_min(1)
    names = [[vals[int(order[i, f])] for i in range(int(size[f]) + 1)] for f in range(act.shape[1])]
    return AttributeF1(best, precision, recall, names)


def occluded_values(scores: AttributeF1, values: Sequence[str], threshold: float = 0.8) -> int:
    """How many of the attribute's values no feature at F1 >= threshold covers."""
    covered: set[str] = set()
    for f in torch.nonzero(scores.f1 >= threshold).flatten().tolist():
        covered.update(scores.names[f])
    return len(set(values) - covered)


@torch.no_grad()
def split_features(active: Tensor, values: Sequence[str], threshold: float = 0.8, min_recall: float = 0.05) -> int:
    """The largest number of features, for any one value, precise for it (P >= threshold) with partial recall."""
    most = 0
    for v in sorted(set(values)):
        p, r, _ = precision_recall_f1(active, torch.tensor([x == v for x in values]))
        most = max(most, int(((p >= threshold) & (r >= min_recall) & (r < threshold)).sum()))
    return most
