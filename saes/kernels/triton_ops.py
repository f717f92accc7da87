"""The Triton path of every sparse kernel (CUDA tensors; CPU tensors under `TRITON_INTERPRET=1`).

Same function names and meanings as `torch_ops`, which is their reference. Two kernels cover
almost everything:

* `_csr_gather_sum`: out[s] = sum over entries e of segment s of w[e] * table[idx[e]] (+ bias).
  With segments = tokens it is the sparse decode (table W_dec) and the encoder input gradient
  (table W_enc^T); with segments = features, through the reverse index, it is the decoder weight
  gradient (table grad_out) and the encoder weight gradient (table x). Each output row is written
  by exactly one program, in a fixed order: deterministic, no atomics, and every row is written
  (empty segments get zeros, or the bias).
* `_gather_dot`: g[e] = a[rows[e]] . b[cols[e]], the gradient at the active features.

Outside deterministic mode the two weight gradients instead scatter with fp32 atomics from the
token-ordered entries (`_scatter_outer_add`), which skips the sort and balances work when a
few features fire on most tokens. Inputs may be fp32 or bf16; accumulation is always fp32.

The interpreter reads `TRITON_INTERPRET` when a kernel is defined, so set it before this module
is first imported (the tests run it in a subprocess for that reason).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from saes.kernels.codes import feature_index
from saes.kernels.dispatch import is_deterministic


@triton.jit
def _row_start(row, stride):
    """row * stride as int64: a program id is int32, and segments x d passes 2^31 (F 524288 at d 4096)."""
    return row.to(tl.int64) * stride


@triton.jit
def _csr_gather_sum(
    table_ptr, stride_t0, stride_t1,
    idx_ptr, w_ptr, offsets_ptr, bias_ptr,
    out_ptr, stride_o0, stride_o1,
    D,
    HAS_BIAS: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):
    seg = tl.program_id(0)
    dofs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = dofs < D
    start = tl.load(offsets_ptr + seg)
    end = tl.load(offsets_ptr + seg + 1)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for e0 in range(start, end, BLOCK_E):
        eofs = e0 + tl.arange(0, BLOCK_E)
        emask = eofs < end
        idx = tl.load(idx_ptr + eofs, mask=emask, other=0)
        w = tl.load(w_ptr + eofs, mask=emask, other=0.0).to(tl.float32)
        tile = tl.load(
            table_ptr + idx[:, None] * stride_t0 + dofs[None, :] * stride_t1,
            mask=emask[:, None] & dmask[None, :],
            other=0.0,
        ).to(tl.float32)
        acc += tl.sum(tile * w[:, None], axis=0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + dofs, mask=dmask, other=0.0).to(tl.float32)
    tl.store(out_ptr + _row_start(seg, stride_o0) + dofs * stride_o1, acc.to(out_ptr.dtype.element_ty), mask=dmask)


@triton.jit
def _gather_dot(
    a_ptr, stride_a0, stride_a1,
    b_ptr, stride_b0, stride_b1,
    rows_ptr, cols_ptr, out_ptr,
    N, D,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    nofs = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = nofs < N
    r = tl.load(rows_ptr + nofs, mask=nmask, other=0)
    c = tl.load(cols_ptr + nofs, mask=nmask, other=0)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dofs = d0 + tl.arange(0, BLOCK_D)
        m = nmask[:, None] & (dofs < D)[None, :]
        a = tl.load(a_ptr + r[:, None] * stride_a0 + dofs[None, :] * stride_a1, mask=m, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + c[:, None] * stride_b0 + dofs[None, :] * stride_b1, mask=m, other=0.0).to(tl.float32)
        acc += tl.sum(a * b, axis=1)
    tl.store(out_ptr + nofs, acc, mask=nmask)


@triton.jit
def _scatter_outer_add(
    table_ptr, stride_t0, stride_t1,
    rows_ptr, cols_ptr, w_ptr, out_ptr,
    N, D,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """out[cols[e]] += w[e] * table[rows[e]] with fp32 atomics (out must be fp32, zeroed)."""
    nofs = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dofs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    nmask = nofs < N
    m = nmask[:, None] & (dofs < D)[None, :]
    r = tl.load(rows_ptr + nofs, mask=nmask, other=0)
    c = tl.load(cols_ptr + nofs, mask=nmask, other=0)
    w = tl.load(w_ptr + nofs, mask=nmask, other=0.0).to(tl.float32)
    t = tl.load(table_ptr + r[:, None] * stride_t0 + dofs[None, :] * stride_t1, mask=m, other=0.0).to(tl.float32)
    tl.atomic_add(out_ptr + c[:, None] * D + dofs[None, :], t * w[:, None], mask=m)


def _block_d(d: int) -> int:
    return max(16, min(256, triton.next_power_of_2(d)))


def csr_gather_sum(
    table: Tensor, idx: Tensor, weights: Tensor, offsets: Tensor, bias: Tensor | None = None,
    out: Tensor | None = None, out_dtype: torch.dtype | None = None,
) -> Tensor:
    """out[s] = sum_{e in offsets[s]:offsets[s+1]} weights[e] * table[idx[e]] (+ bias); fp32 accumulate."""
    segs = offsets.numel() - 1
    d = table.shape[1]
    if out is None:
        out = torch.empty(segs, d, dtype=out_dtype or table.dtype, device=table.device)
    if segs == 0 or d == 0:
        return out
    bd = _block_d(d)
    grid = (segs, triton.cdiv(d, bd))
    _csr_gather_sum[grid](
        table, table.stride(0), table.stride(1),
        idx, weights, offsets, bias if bias is not None else table,
        out, out.stride(0), out.stride(1),
        d,
        HAS_BIAS=bias is not None, BLOCK_E=16, BLOCK_D=bd,
    )
    return out


def decode_forward(
    vals: Tensor, cols: Tensor, offsets: Tensor, k: int | None, W_dec: Tensor, b_dec: Tensor | None,
    out: Tensor | None = None,
) -> Tensor:
    """x_hat[b] = sum over b's entries of vals * W_dec[cols] (+ b_dec)."""
    return csr_gather_sum(W_dec, cols, vals, offsets, b_dec, out=out)


def encoder_input_grad(
    g: Tensor, cols: Tensor, offsets: Tensor, k: int | None, W_enc_t: Tensor, out: Tensor | None = None
) -> Tensor:
    """dx = sparse(g) W_enc^T, with `W_enc_t` the `[F, d]` view of the encoder (any strides)."""
    return csr_gather_sum(W_enc_t, cols, g, offsets, None, out=out)


def grad_at_active(
    grad_out: Tensor, W: Tensor, rows: Tensor, cols: Tensor, offsets: Tensor | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """g[n] = grad_out[rows[n]] . W[cols[n]] in fp32."""
    n = cols.numel()
    if out is None:
        out = torch.empty(n, dtype=torch.float32, device=grad_out.device)
    if n == 0:
        return out
    d = grad_out.shape[1]
    bn, bd = 32, min(128, _block_d(d))
    _gather_dot[(triton.cdiv(n, bn),)](
        grad_out, grad_out.stride(0), grad_out.stride(1),
        W, W.stride(0), W.stride(1),
        rows, cols, out, n, d,
        BLOCK_N=bn, BLOCK_D=bd,
    )
    return out


def weighted_segment_sum(
    table: Tensor, idx: Tensor, order: Tensor, seg_offsets: Tensor, weights: Tensor, out: Tensor | None = None
) -> Tensor:
    """Segment sums through a reverse index (see `torch_ops.weighted_segment_sum`)."""
    return csr_gather_sum(table, idx[order], weights[order], seg_offsets, None, out=out)


def scatter_outer_add(table: Tensor, rows: Tensor, cols: Tensor, w: Tensor, num_out: int) -> Tensor:
    """out[cols[e]] += w[e] * table[rows[e]] with atomics; fp32 `[num_out, d]` result."""
    d = table.shape[1]
    out = torch.zeros(num_out, d, dtype=torch.float32, device=table.device)
    n = cols.numel()
    if n == 0:
        return out
    bn, bd = 32, min(128, _block_d(d))
    _scatter_outer_add[(triton.cdiv(n, bn), triton.cdiv(d, bd))](
        table, table.stride(0), table.stride(1), rows, cols, w, out, n, d, BLOCK_N=bn, BLOCK_D=bd
    )
    return out


def decoder_weight_grad(
    vals: Tensor, rows: Tensor, cols: Tensor, grad_out: Tensor, num_features: int,
    by_feature: tuple[Tensor, Tensor] | None = None, out: Tensor | None = None,
) -> Tensor:
    """dW_dec[f] = sum over entries of f of vals * grad_out[row]; `[F, d]`, zero for untouched rows."""
    if not is_deterministic():
        res = scatter_outer_add(grad_out, rows, cols, vals, num_features).to(grad_out.dtype)
        return res if out is None else out.copy_(res)
    if by_feature is None:
        by_feature = feature_index(cols, num_features)
    order, fo = by_feature
    return weighted_segment_sum(grad_out, rows, order, fo, vals, out=out)


def encoder_weight_grad(
    x: Tensor, g: Tensor, rows: Tensor, cols: Tensor, num_features: int,
    by_feature: tuple[Tensor, Tensor] | None = None, out: Tensor | None = None,
) -> Tensor:
    """dW_enc = x^T sparse(g), as `[F, d]`."""
    return decoder_weight_grad(g, rows, cols, x, num_features, by_feature, out=out)


def bias_grad(
    g: Tensor, cols: Tensor, num_features: int, by_feature: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """db_enc[f] = sum of g over entries of feature f (a segment sum over a 1-column table of ones)."""
    if not is_deterministic():
        return torch.zeros(num_features, dtype=g.dtype, device=g.device).index_add_(0, cols, g)
    order, fo = by_feature if by_feature is not None else feature_index(cols, num_features)
    ones = g.new_ones(1, 1)
    zeros = torch.zeros_like(cols)
    return csr_gather_sum(ones, zeros, g[order], fo, None, out_dtype=g.dtype).view(-1)
