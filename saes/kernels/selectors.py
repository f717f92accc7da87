"""Selectors: which pre-activations of a batch become active features.

A selector only picks places; the value at a picked place is always relu(pre) there, and the
gradient flows back through those places only. Every rule here reads the dense pre-activations
(the one dense `[B, F]` tensor training keeps) and writes nothing else of that size except, for
`Threshold`, the boolean mask `nonzero` needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from workbench.errors import WorkbenchError


@dataclass(frozen=True)
class TopK:
    """Each token keeps its k largest pre-activations (Gao et al. 2024).

    `features` restricts the choice to a subset of feature ids (AuxK picks among dead features);
    only a `[B, len(features)]` slice of the pre-activations is read.
    """

    k: int
    features: Tensor | None = None


@dataclass(frozen=True)
class BatchTopK:
    """The k·B largest pre-activations of the whole batch (BatchTopK; also Mutual Choice)."""

    k: int


@dataclass(frozen=True)
class FeatureChoice:
    """Feature f takes the `capacity[f]` tokens of the batch where its pre-activation is largest."""

    capacity: Tensor


@dataclass(frozen=True)
class Threshold:
    """Every place where pre > theta[f] (JumpReLU, and the inference rule of BatchTopK / FC / MC)."""

    theta: Tensor


Selector = TopK | BatchTopK | FeatureChoice | Threshold
SELECTOR_NAMES = ("TopK", "BatchTopK", "FeatureChoice", "Threshold")


@dataclass
class Selection:
    """The picked places of one selector: raw pre-activations there, token ids, feature ids.

    `rows` ascending; `k` set when every token has exactly k entries (stored row-major).
    """

    pre: Tensor
    rows: Tensor | None
    cols: Tensor
    offsets: Tensor | None
    k: int | None


def _check_values(t: Tensor, low: int, high: int | None, message: str) -> None:
    """Every value of `t` in [low, high) (no upper bound when `high` is None), else `message`.

    `encode` checks its selectors on every step, and the AuxK dead list is a new tensor each step:
    reading its min and max back would stall the host on every CUDA step (issue 21). On a GPU the
    check is a device-side assert instead, which fails the next synchronising call with `message`;
    on the CPU the values are read and a bad one is a WorkbenchError naming the valid range.
    """
    if t.is_cuda:
        ok = t >= low if high is None else (t >= low) & (t < high)
        torch._assert_async(ok.all(), message)
        return
    if int(t.min()) < low or (high is not None and int(t.max()) >= high):
        raise WorkbenchError(message)


def check_selector(sel: object, batch_size: int, num_features: int) -> None:
    """Reject a selector that cannot apply to a `[batch_size, num_features]` batch, naming the values."""
    if isinstance(sel, TopK):
        limit = num_features if sel.features is None else sel.features.numel()
        if sel.k < 1 or (sel.features is None and sel.k > num_features):
            raise WorkbenchError(f"TopK k={sel.k} must be between 1 and the number of features ({limit})")
        if sel.features is not None and sel.features.numel():
            _check_values(sel.features, 0, num_features, f"TopK features must be feature ids in [0, {num_features})")
    elif isinstance(sel, BatchTopK):
        if sel.k < 1 or sel.k > num_features:
            raise WorkbenchError(f"BatchTopK k={sel.k} must be between 1 and the number of features ({num_features})")
    elif isinstance(sel, FeatureChoice):
        if sel.capacity.shape != (num_features,):
            raise WorkbenchError(
                f"FeatureChoice capacity has shape {tuple(sel.capacity.shape)}; expected ({num_features},)"
            )
        if sel.capacity.numel():
            _check_values(sel.capacity, 0, None, "FeatureChoice capacity must be >= 0 for every feature")
    elif isinstance(sel, Threshold):
        if sel.theta.shape != (num_features,):
            raise WorkbenchError(f"Threshold theta has shape {tuple(sel.theta.shape)}; expected ({num_features},)")
    else:
        raise WorkbenchError(
            f"unknown selector {type(sel).__name__!r}; valid choices: {', '.join(SELECTOR_NAMES)}"
        )


def select(pre: Tensor, sel: Selector) -> Selection:
    """Apply one selector to detached pre-activations `[B, F]` (torch path; also used on CUDA)."""
    if isinstance(sel, TopK):
        return select_topk(pre, sel.k, sel.features)
    if isinstance(sel, BatchTopK):
        return select_batch_topk(pre, sel.k)
    if isinstance(sel, FeatureChoice):
        return select_feature_choice(pre, sel.capacity)
    if isinstance(sel, Threshold):
        return select_threshold(pre, sel.theta)
    raise WorkbenchError(f"unknown selector {type(sel).__name__!r}; valid choices: {', '.join(SELECTOR_NAMES)}")


def select_topk(pre: Tensor, k: int, features: Tensor | None = None) -> Selection:
    """Per-token top-k, optionally among `features` only. Fixed width, so no CSR is built."""
    if features is None:
        v, i = pre.topk(k, dim=1, sorted=False)
        return Selection(v, None, i, None, k)
    features = features.to(pre.device, torch.long)
    kk = min(k, features.numel())
    if kk == 0:
        b = pre.shape[0]
        return Selection(pre.new_zeros(b, 0), None, features.new_zeros(b, 0), None, 0)
    v, j = pre.index_select(1, features).topk(kk, dim=1, sorted=False)
    return Selection(v, None, features[j], None, kk)


def select_batch_topk(pre: Tensor, k: int) -> Selection:
    """The k·B largest entries of the batch, returned in token order.

    Exact, but avoids a top-k over all B·F entries: every token's top-c candidates (c = 4k) are
    ranked, and the k·B-th largest candidate is a lower bound `cut` of the true cut-off. A token
    whose smallest candidate lies below `cut` cannot hold any further winner; a token whose every
    candidate lies at or above it ("saturated", on real activations a few percent of tokens that
    want many features) may, so its whole row joins the candidates. The final top-k·B runs over
    that union, which is exact and usually ~10x smaller than the batch.
    """
    b, f = pre.shape
    total = min(k * b, b * f)
    c = min(4 * k, f)
    flat_idx: Tensor | None = None
    if c < f:
        cv, ci = pre.topk(c, dim=1, sorted=False)
        cut = cv.reshape(-1).topk(total, sorted=False).values.min()
        saturated = cv.min(dim=1).values >= cut
        n_sat = int(saturated.sum())
        if n_sat == 0:
            v, j = cv.reshape(-1).topk(total, sorted=False)
            tok = torch.div(j, c, rounding_mode="floor")
            flat_idx = tok * f + ci.reshape(-1)[j]
        elif n_sat * f < (b * f) // 2:  # the union is clearly smaller than the whole batch
            keep = ~saturated
            rows_c = torch.nonzero(keep).flatten()
            rows_s = torch.nonzero(saturated).flatten()
            cand_v = torch.cat([cv[rows_c].reshape(-1), pre[rows_s].reshape(-1)])
            cand_i = torch.cat([
                (rows_c[:, None] * f + ci[rows_c]).reshape(-1),
                (rows_s[:, None] * f + torch.arange(f, device=pre.device)[None, :]).reshape(-1),
            ])
            v, j = cand_v.topk(total, sorted=False)
            flat_idx = cand_i[j]
    if flat_idx is None:
        v, flat_idx = pre.reshape(-1).topk(total, sorted=False)
    order = torch.argsort(flat_idx)
    flat_idx = flat_idx[order]
    v = v[order]
    rows = torch.div(flat_idx, f, rounding_mode="floor")
    cols = flat_idx - rows * f
    return Selection(v, rows, cols, None, None)


def select_feature_choice(pre: Tensor, capacity: Tensor, features_major: bool = False) -> Selection:
    """Each feature's top `capacity[f]` tokens (capacities may differ, e.g. Zipf-distributed).

    `features_major=True` takes the pre-activations as `[F, B]`: `encode` computes them in that
    layout when every selector is a FeatureChoice, because a top-k along contiguous rows is about
    2x faster on the CPU than along the strided token axis of a `[B, F]` matrix.
    """
    pf = pre if features_major else pre.t()  # [F, B] view either way
    f, b = pf.shape
    capacity = capacity.to(pre.device, torch.long).clamp(max=b)
    m = int(capacity.max()) if capacity.numel() else 0
    if m == 0:
        e = torch.zeros(0, dtype=torch.long, device=pre.device)
        return Selection(pre.new_zeros(0), e, e, None, None)
    # Features are ranked in groups of similar capacity (powers of two), each group with a top-k
    # as wide as its own largest capacity: with widely spread capacities (Zipf) one top-m over
    # all features would cost F x max(capacity) instead of about 2 x sum(capacity).
    level = torch.floor(torch.log2(capacity.clamp(min=1).double())).long()
    level = torch.where(capacity == 0, torch.full_like(level, -1), level)
    levels = [int(v) for v in torch.unique(level) if int(v) >= 0]
    parts_v, parts_rows, parts_cols = [], [], []
    for lv in levels:
        if len(levels) == 1:
            feats = torch.nonzero(level >= 0).flatten() if bool((level < 0).any()) else None
        else:
            feats = torch.nonzero(level == lv).flatten()
        sub = pf if feats is None else pf.index_select(0, feats)
        cap = capacity if feats is None else capacity[feats]
        mg = int(cap.max())
        v, t = sub.topk(mg, dim=1, sorted=True)  # [n, mg]: the group's rank-r token per feature
        keep = torch.arange(mg, device=pre.device)[None, :] < cap[:, None]
        ids = torch.arange(f, device=pre.device) if feats is None else feats
        parts_v.append(v[keep])
        parts_rows.append(t[keep])
        parts_cols.append(ids[:, None].expand(-1, mg)[keep])
    v, rows, cols = (torch.cat(p) if len(p) > 1 else p[0] for p in (parts_v, parts_rows, parts_cols))
    order = torch.argsort(rows * f + cols)
    return Selection(v[order], rows[order], cols[order], None, None)


def select_threshold(pre: Tensor, theta: Tensor) -> Selection:
    """All places with pre > theta[f], in token order (the nonzero of a boolean mask is row-major)."""
    nz = (pre > theta.to(pre.device, pre.dtype)).nonzero()
    rows, cols = nz[:, 0], nz[:, 1]
    return Selection(pre[rows, cols], rows, cols, None, None)
