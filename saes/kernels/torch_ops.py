"""The torch path of every sparse kernel: what CPU tensors run, and the reference Triton is held to.

Each building block is one well-optimised library call, chosen by measurement on the 2-core CPU
(see benchmarks/RESULTS.md, "Kernels"): per-token and per-feature weighted row sums are
`F.embedding_bag` (no `[N, d]` gather is ever written), and the gradient at the active features
is `torch.sparse.sampled_addmm` (dot products only at the active places). All of them are
deterministic on the CPU: no atomics.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate low-precision inputs in fp32; keep fp32 and fp64 as they are."""
    return torch.promote_types(dtype, torch.float32)


def _bag(table: Tensor, idx: Tensor, offsets: Tensor | None, k: int | None, weights: Tensor, rows: int) -> Tensor:
    """out[r] = sum over r's entries of weights[n] * table[idx[n]]; the workhorse of the torch path.

    `k` set: entries are row-major `[rows, k]` (fixed width); else `offsets` is `[rows + 1]`.
    """
    weights = weights.to(table.dtype)
    if idx.numel() == 0:
        return table.new_zeros(rows, table.shape[1])
    if table.stride(-1) != 1 or table.stride(0) != table.shape[1]:
        table = table.contiguous()
    if k is not None:
        return F.embedding_bag(idx.view(rows, k), table, per_sample_weights=weights.view(rows, k), mode="sum")
    return F.embedding_bag(idx, table, offsets, per_sample_weights=weights, mode="sum", include_last_offset=True)


def decode_forward(
    vals: Tensor, cols: Tensor, offsets: Tensor, k: int | None, W_dec: Tensor, b_dec: Tensor | None
) -> Tensor:
    """x_hat[b] = sum over b's entries of vals * W_dec[cols] (+ b_dec); `k` set = fixed width."""
    out = _bag(W_dec, cols, offsets, k, vals, offsets.numel() - 1)
    if b_dec is not None:
        out = out + b_dec
    return out


def grad_at_active(
    grad_out: Tensor, W: Tensor, rows: Tensor, cols: Tensor, offsets: Tensor | None = None
) -> Tensor:
    """g[n] = grad_out[rows[n]] . W[cols[n]]: the gradient of each active value, and nothing else.

    `offsets` (CSR over rows) may be given to save recomputing it. Accumulates in fp32.
    """
    b = grad_out.shape[0]
    n = cols.numel()
    if n and cols.dtype != torch.long:
        cols = cols.long()
    if n == 0:
        return grad_out.new_zeros(0, dtype=acc_dtype(grad_out.dtype))
    if offsets is None:
        offsets = torch.zeros(b + 1, dtype=torch.long, device=rows.device)
        torch.cumsum(torch.bincount(rows, minlength=b), 0, out=offsets[1:])
    acc = acc_dtype(grad_out.dtype)
    go = grad_out.to(acc)
    Wf = W.to(acc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        pattern = torch.sparse_csr_tensor(
            offsets, cols, go.new_zeros(n), size=(b, W.shape[0]), check_invariants=False
        )
        out = torch.sparse.sampled_addmm(pattern, go, Wf.t())
    return out.values()


def weighted_segment_sum(table: Tensor, idx: Tensor, order: Tensor, seg_offsets: Tensor, weights: Tensor) -> Tensor:
    """out[s] = sum over entries n of segment s of weights[n] * table[idx[n]], via a reverse index.

    `order` lists the entries segment by segment and `seg_offsets` delimits them; used for both
    weight gradients with segments = features (`SparseCodes.by_feature()`).
    """
    segs = seg_offsets.numel() - 1
    return _bag(table, idx[order], seg_offsets, None, weights[order], segs)


def decoder_weight_grad(
    vals: Tensor, rows: Tensor, cols: Tensor, grad_out: Tensor, num_features: int,
    by_feature: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """dW_dec[f] = sum over entries of f of vals * grad_out[row]: `[F, d]`, zero for untouched rows."""
    if by_feature is None:
        from saes.kernels.codes import feature_index

        by_feature = feature_index(cols, num_features)
    order, fo = by_feature
    return weighted_segment_sum(grad_out, rows, order, fo, vals)


def encoder_weight_grad(
    x: Tensor, g: Tensor, rows: Tensor, cols: Tensor, num_features: int,
    by_feature: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """dW_enc = x^T sparse(g), returned as `[F, d]` (the transposed, contiguous-row layout)."""
    return decoder_weight_grad(g, rows, cols, x, num_features, by_feature)


def encoder_input_grad(g: Tensor, cols: Tensor, offsets: Tensor, k: int | None, W_enc_t: Tensor) -> Tensor:
    """dx = sparse(g) W_enc^T, with `W_enc_t` the `[F, d]` view of the encoder."""
    return decode_forward(g, cols, offsets, k, W_enc_t, None)


def bias_grad(
    g: Tensor, cols: Tensor, num_features: int, by_feature: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """db_enc[f] = sum of g over entries of feature f (`index_add_` is deterministic on the CPU)."""
    return torch.zeros(num_features, dtype=g.dtype, device=g.device).index_add_(0, cols, g)


# ---- dense references: the plainest possible statement of each kernel, for tests and benchmarks ----


def dense_decode(codes_dense: Tensor, W_dec: Tensor, b_dec: Tensor | None) -> Tensor:
    out = codes_dense @ W_dec
    return out if b_dec is None else out + b_dec


def dense_grad_at_active(grad_out: Tensor, W: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    return (grad_out @ W.t())[rows, cols]


def dense_decoder_weight_grad(codes_dense: Tensor, grad_out: Tensor) -> Tensor:
    return codes_dense.t() @ grad_out


def dense_encoder_weight_grad(x: Tensor, g_dense: Tensor) -> Tensor:
    return (x.t() @ g_dense).t()
