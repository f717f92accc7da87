"""`encode` and `sparse_decode`: the two differentiable entry points every SAE architecture uses.

Both are custom autograd Functions so that the backward pass touches only the active features:
the gradient of a TopK SAE never exists as a dense `[B, F]` tensor, only as one value per active
place. The dense encoder matmul is the one `[B, F]` piece of work, done once however many
selectors (TopK plus AuxK, Multi-TopK's k and 4k, ...) read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import Tensor

from saes.kernels.codes import FeatureIndex, SparseCodes
from saes.kernels.dispatch import fused_select_enabled, ops_for
from saes.kernels.selectors import (
    FeatureChoice,
    Selection,
    Selector,
    check_selector,
    select,
    select_feature_choice,
)
from saes.kernels.torch_ops import acc_dtype
from workbench.errors import WorkbenchError


@dataclass
class _Index:
    """Index tensors of one set of codes (never its values, so no autograd reference cycle)."""

    rows: Tensor
    cols: Tensor
    offsets: Tensor
    k: int | None
    cache: dict


def _index_of(codes: SparseCodes) -> _Index:
    return _Index(codes.rows, codes.cols, codes.offsets, codes.k, codes.cache)


def _codes_from_selection(sel_pre: Tensor, rows, cols, offsets, k, b: int, f: int) -> SparseCodes:
    dev = cols.device
    if k is not None:
        rows = torch.arange(b, device=dev).repeat_interleave(k)
        offsets = torch.arange(b + 1, device=dev) * k
        return SparseCodes(sel_pre.reshape(-1), cols.reshape(-1), rows, offsets, f, k=k)
    return SparseCodes.from_rows_cols(sel_pre, rows, cols, b, f)


_WORKSPACE: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def _workspace(shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> Tensor | None:
    """A reused buffer for the CPU pre-activations.

    A fresh `[B, F]` tensor per step is larger than glibc's mmap threshold, so every step would
    map and page-fault tens of megabytes anew (about 10% of a CPU training step at F 4608).
    Nothing keeps a view of `pre` past `encode`, so one buffer per dtype can be reused. On CUDA
    the caching allocator already does this, so no buffer is kept there (None = allocate).
    """
    if device.type != "cpu":
        return None
    n = shape[0] * shape[1]
    buf = _WORKSPACE.get((dtype, device))
    if buf is None or buf.numel() < n:
        buf = torch.empty(n, dtype=dtype, device=device)
        _WORKSPACE[(dtype, device)] = buf
    return buf[:n].view(shape)


def release_workspace() -> None:
    """Free the buffers `encode` keeps for the pre-activations on the CPU."""
    _WORKSPACE.clear()


def _fused_topk(x: Tensor, W_enc: Tensor, b_enc: Tensor, selectors, mdt: torch.dtype) -> tuple[Tensor, Tensor] | None:
    """The top-k of the TopK selectors over all features in one fused matmul + selection pass when
    `SAE_SELECT=fused` on the Triton backend and every selector is a TopK (see
    `saes.kernels.fused_select`), else None."""
    if not fused_select_enabled(x):
        return None
    from saes.kernels.fused_select import fusable_k, fused_topk

    k = fusable_k(selectors)
    return None if k is None else fused_topk(x, W_enc, b_enc, k, mdt)


class _Encode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, selectors, ops, out_codes, matmul_dtype):  # type: ignore[override]
        b, f = x.shape[0], W_enc.shape[1]
        exact = matmul_dtype is None or matmul_dtype == x.dtype
        mdt = x.dtype if exact else matmul_dtype
        # Feature Choice ranks tokens within each feature: give it contiguous [F, B] rows.
        features_major = all(isinstance(sel, FeatureChoice) for sel in selectors)
        fused = _fused_topk(x, W_enc, b_enc, selectors, mdt)
        if fused is not None:
            pre = None
        elif features_major:
            ws = _workspace((f, b), mdt, x.device)
            pre = torch.addmm(b_enc.to(mdt)[:, None], W_enc.t().to(mdt), x.t().to(mdt), out=ws)
        else:
            pre = torch.addmm(b_enc.to(mdt), x.to(mdt), W_enc.to(mdt), out=_workspace((b, f), mdt, x.device))
        vals, indices, masks = [], [], []
        for sel in selectors:
            if fused is not None and sel.features is not None:
                from saes.kernels.fused_select import select_topk_among

                s = select_topk_among(x, W_enc, b_enc, sel.k, sel.features, mdt)
            elif fused is not None:  # sorted largest first: each TopK takes its first k
                s = Selection(fused[0][:, : sel.k], None, fused[1][:, : sel.k], None, sel.k)
            elif features_major:
                s = select_feature_choice(pre, sel.capacity, features_major=True)
            else:
                s = select(pre, sel)
            codes = _codes_from_selection(s.pre, s.rows, s.cols, s.offsets, s.k, b, f)
            if not exact:
                # The low-precision matmul only chose the places; the values there are recomputed
                # exactly in the input dtype (k dot products per token, no dense work).
                codes.vals = ops.grad_at_active(x, W_enc.t(), codes.rows, codes.cols, codes.offsets).to(x.dtype)
                codes.vals += b_enc.to(x.dtype)[codes.cols]
            v = codes.vals.relu()
            masks.append(codes.vals > 0)
            codes.vals = v
            vals.append(v)
            indices.append(_index_of(codes))
            out_codes.append(codes)
        del pre
        ctx.save_for_backward(x, W_enc, *masks)
        ctx.indices = indices
        ctx.ops = ops
        ctx.b_enc_dtype = b_enc.dtype
        return tuple(vals)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        x, W_enc, *masks = ctx.saved_tensors
        ops: ModuleType = ctx.ops
        f = W_enc.shape[1]
        W_t = W_enc.t()  # [F, d]: a contiguous view when W_enc is the transpose of an [F, d] parameter
        parts = [
            (idx, (g * m).to(x.dtype))
            for idx, g, m in zip(ctx.indices, grads, masks)
            if g is not None
        ]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dx = dW = db = None
        if not parts:
            return dx, dW, db, None, None, None, None
        if need_x:
            for idx, g in parts:
                part = ops.encoder_input_grad(g, idx.cols, idx.offsets, idx.k, W_t)
                dx = part if dx is None else dx + part
        if need_w or need_b:
            if len(parts) == 1:
                idx, g = parts[0]
                rows, cols = idx.rows, idx.cols
                by_feature = FeatureIndex(idx.cache, cols, f)
            else:
                rows = torch.cat([idx.rows for idx, _ in parts])
                cols = torch.cat([idx.cols for idx, _ in parts])
                g = torch.cat([g for _, g in parts])
                by_feature = FeatureIndex(None, cols, f)
            if need_w:
                dW = ops.encoder_weight_grad(x, g, rows, cols, f, by_feature).t()
            if need_b:
                db = ops.bias_grad(g.to(acc_dtype(g.dtype)), cols, f, by_feature).to(ctx.b_enc_dtype)
        return dx, dW, db, None, None, None, None


def encode(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    selectors: Sequence[Selector],
    matmul_dtype: torch.dtype | None = None,
) -> list[SparseCodes]:
    """One dense matmul `pre = x @ W_enc + b_enc`, then the codes each selector picks from it.

    `x` is `[B, d]`, `W_enc` `[d, F]` (fastest as `param.t()` of an `[F, d]` parameter: the forward
    is then a plain `linear` and both backward reductions read contiguous rows), `b_enc` `[F]`.
    Each returned `vals` is differentiable; the backward sums the gradients of all of them and
    touches only their active places.

    `matmul_dtype=torch.bfloat16` runs the dense matmul (and the selection) in bf16, about 2x
    faster on CPUs with bf16 units and on GPUs, while the values at the chosen places are
    recomputed in the input dtype, so codes and gradients stay full precision; only which
    places win a near-tie at the selection boundary can change.
    """
    if x.dim() != 2 or W_enc.dim() != 2 or x.shape[1] != W_enc.shape[0]:
        raise WorkbenchError(
            f"encode needs x [B, d] and W_enc [d, F] with the same d; got x {tuple(x.shape)}, "
            f"W_enc {tuple(W_enc.shape)}"
        )
    if b_enc.shape != (W_enc.shape[1],):
        raise WorkbenchError(f"b_enc has shape {tuple(b_enc.shape)}; expected ({W_enc.shape[1]},) to match W_enc")
    if not selectors:
        raise WorkbenchError("encode needs at least one selector (TopK, BatchTopK, FeatureChoice, Threshold)")
    for sel in selectors:
        check_selector(sel, x.shape[0], W_enc.shape[1])
    out: list[SparseCodes] = []
    vals = _Encode.apply(x, W_enc, b_enc, tuple(selectors), ops_for(x), out, matmul_dtype)
    for codes, v in zip(out, vals):
        codes.vals = v
    return out


class _Decode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vals, W_dec, b_dec, idx, ops):  # type: ignore[override]
        ctx.save_for_backward(vals, W_dec)
        ctx.idx = idx
        ctx.ops = ops
        return ops.decode_forward(vals, idx.cols, idx.offsets, idx.k, W_dec, b_dec)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        vals, W_dec = ctx.saved_tensors
        idx: _Index = ctx.idx
        ops: ModuleType = ctx.ops
        need_v, need_w, need_b = ctx.needs_input_grad[:3]
        gv = dW = db = None
        if need_v:
            gv = ops.grad_at_active(grad_out, W_dec, idx.rows, idx.cols, idx.offsets).to(vals.dtype)
        if need_w:
            by_feature = FeatureIndex(idx.cache, idx.cols, W_dec.shape[0])  # sorted only if a kernel reads it
            dW = ops.decoder_weight_grad(vals, idx.rows, idx.cols, grad_out, W_dec.shape[0], by_feature)
            dW = dW.to(W_dec.dtype)
        if need_b:
            db = grad_out.sum(0)
        return gv, dW, db, None, None


def sparse_decode(codes: SparseCodes, W_dec: Tensor, b_dec: Tensor | None = None) -> Tensor:
    """x_hat = codes @ W_dec (+ b_dec) without a dense code matrix; `[B, d]` out.

    The backward writes the decoder gradient only into the rows of active features (the rest of
    the `[F, d]` gradient is zeros) and the code gradient only at the active places.
    """
    if W_dec.dim() != 2 or W_dec.shape[0] != codes.num_features:
        raise WorkbenchError(
            f"W_dec has shape {tuple(W_dec.shape)}; expected [{codes.num_features}, d] to match the codes' "
            f"{codes.num_features} features"
        )
    if b_dec is not None and b_dec.shape != (W_dec.shape[1],):
        raise WorkbenchError(f"b_dec has shape {tuple(b_dec.shape)}; expected ({W_dec.shape[1]},) to match W_dec")
    return _Decode.apply(codes.vals, W_dec, b_dec, _index_of(codes), ops_for(W_dec))
