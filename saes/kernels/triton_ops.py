"""The Triton path of every sparse kernel (CUDA tensors; CPU tensors under `TRITON_INTERPRET=1`).

Same function names and meanings as `torch_ops`, which is their reference. Three kernels cover
almost everything:

* `_token_bag`: out[b] = sum over entries e of token b of w[e] * table[idx[e]] (+ bias): the
  sparse decode (table W_dec) and the encoder input gradient (table W_enc^T). One program per
  token and block of columns gathers the token's rows as `[BLOCK_E, BLOCK_D]` tiles (k <= 32:
  the whole token at once) and reduces over the rows once, after the loop, so no
  cross-warp reduction runs per iteration; bf16 tables are read as bf16 (half the bytes) and
  accumulated in fp32. Fixed-k codes pass k as a compile-time constant: no offsets are read.
* `_feature_chunk_sums` + `_feature_chunk_fixup`: the weight gradients, out[f] = sum over the
  entries of feature f of w[e] * table[row[e]] (tables grad_out and x), deterministically. The
  entries in feature order (the reverse index) are cut into chunks of `CHUNK` entries: each
  program gathers one chunk's rows as a tile, sums each feature run by a segmented scan, and
  writes every run that starts and ends inside the chunk;
  a run that crosses a chunk boundary leaves a partial sum per chunk, and the fix-up adds those
  in chunk order (tiles of `BLOCK_P` partials). So every program does the same bounded work
  however uneven the features are (a feature on every token costs B / CHUNK partials, not one
  program looping over B rows), nothing is atomic, and each output row is written exactly once
  (the rows of features that never fired get zeros from the same launch).
* `_gather_dot`: g[e] = a[rows[e]] . b[cols[e]], the gradient at the active features.

Outside deterministic mode the two weight gradients instead scatter with fp32 atomics from the
token-ordered entries (`_scatter_outer_add`), which needs no reverse index. Inputs may be fp32
or bf16; accumulation is always fp32.

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
def _token_bag(
    table_ptr, stride_t0, stride_t1,
    idx_ptr, w_ptr, offsets_ptr, bias_ptr,
    out_ptr, stride_o0, stride_o1,
    D,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """out[seg] = sum of w[e] * table[idx[e]] over the segment's entries; K > 0: fixed width K."""
    seg = tl.program_id(0).to(tl.int64)
    dofs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = dofs < D
    if K > 0:
        start = seg * K
        end = start + K
    else:
        start = tl.load(offsets_ptr + seg)
        end = tl.load(offsets_ptr + seg + 1)
    acc = tl.zeros([BLOCK_E, BLOCK_D], dtype=tl.float32)
    for e0 in range(start, end, BLOCK_E):
        eofs = e0 + tl.arange(0, BLOCK_E)
        emask = eofs < end
        idx = tl.load(idx_ptr + eofs, mask=emask, other=0)
        w = tl.load(w_ptr + eofs, mask=emask, other=0.0).to(tl.float32)
        tile = tl.load(
            table_ptr + idx[:, None] * stride_t0 + dofs[None, :] * stride_t1,
            mask=emask[:, None] & dmask[None, :],
            other=0.0,
        )
        acc += tile.to(tl.float32) * w[:, None]
    res = tl.sum(acc, axis=0)
    if HAS_BIAS:
        res += tl.load(bias_ptr + dofs, mask=dmask, other=0.0).to(tl.float32)
    tl.store(out_ptr + _row_start(tl.program_id(0), stride_o0) + dofs * stride_o1, res.to(out_ptr.dtype.element_ty),
             mask=dmask)


@triton.jit
def _segmented_add(start_a, sum_a, start_b, sum_b):
    """Combine of a segmented inclusive sum: b's running sum restarts where b starts a run."""
    return start_a | start_b, tl.where(start_b, sum_b, sum_a + sum_b)


@triton.jit
def _feature_chunk_sums(
    table_ptr, stride_t0, stride_t1,
    order_ptr, rows_ptr, cols_ptr, w_ptr, fo_ptr,
    out_ptr, stride_o0, stride_o1, part_ptr,
    N, F, D, n_chunks,
    CHUNK: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Programs < n_chunks: one chunk of the feature-ordered entries each; the rest: zero rows.

    Entry i (in feature order) is entry order[i] of the codes. The chunk's rows are gathered as
    one `[CHUNK, BLOCK_D]` tile (all loads in flight at once) and summed per feature run by one
    segmented scan along the entries. A run of feature f inside the chunk [c0, c1) is written to
    out[f] when f's whole segment [fo[f], fo[f+1]) lies inside the chunk; otherwise its sum goes
    to part[chunk, 0] (the run holding the chunk's first entry) or part[chunk, 1] (the run
    holding its last entry), for `_feature_chunk_fixup`.
    """
    pid = tl.program_id(0)
    dofs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = dofs < D
    if pid < n_chunks:
        c0 = pid.to(tl.int64) * CHUNK
        c1 = tl.minimum(c0 + CHUNK, N)
        i = c0 + tl.arange(0, CHUNK)
        imask = i < c1
        e = tl.load(order_ptr + i, mask=imask, other=0)
        f = tl.load(cols_ptr + e, mask=imask, other=0)
        r = tl.load(rows_ptr + e, mask=imask, other=0)
        w = tl.load(w_ptr + e, mask=imask, other=0.0).to(tl.float32)
        s0 = tl.load(fo_ptr + f, mask=imask, other=0)
        s1 = tl.load(fo_ptr + f + 1, mask=imask, other=0)
        m2 = imask[:, None] & dmask[None, :]
        tile = tl.load(table_ptr + r[:, None] * stride_t0 + dofs[None, :] * stride_t1, mask=m2, other=0.0)
        tile = tile.to(tl.float32) * w[:, None]
        starts = tl.broadcast_to(((i == c0) | (i == s0))[:, None], [CHUNK, BLOCK_D])
        _, sums = tl.associative_scan((starts, tile), 0, _segmented_add)
        last = imask & ((i == c1 - 1) | (i == s1 - 1))
        whole = (s0 >= c0) & (s1 <= c1)
        tl.store(out_ptr + f[:, None] * stride_o0 + dofs[None, :] * stride_o1, sums.to(out_ptr.dtype.element_ty),
                 mask=(last & whole)[:, None] & dmask[None, :])
        slot = pid.to(tl.int64) * 2 + tl.where(s0 <= c0, 0, 1)
        tl.store(part_ptr + slot[:, None] * D + dofs[None, :], sums,
                 mask=(last & (whole == 0))[:, None] & dmask[None, :])
    else:
        fofs = (pid - n_chunks).to(tl.int64) * BLOCK_F + tl.arange(0, BLOCK_F)
        fmask = fofs < F
        a = tl.load(fo_ptr + fofs, mask=fmask, other=0)
        b = tl.load(fo_ptr + fofs + 1, mask=fmask, other=0)
        empty = fmask & (a == b)
        zero = tl.zeros([BLOCK_F, BLOCK_D], dtype=out_ptr.dtype.element_ty)
        tl.store(out_ptr + fofs[:, None] * stride_o0 + dofs[None, :] * stride_o1, zero,
                 mask=empty[:, None] & dmask[None, :])


@triton.jit
def _feature_chunk_fixup(
    order_ptr, cols_ptr, fo_ptr,
    out_ptr, stride_o0, stride_o1, part_ptr,
    N, D,
    CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """out[f] for each feature run that starts in this chunk and continues past it: the chunk's
    partial, then the first-run partials of the following chunks it covers, in chunk order."""
    p = tl.program_id(0).to(tl.int64)
    dofs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = dofs < D
    c0 = p * CHUNK
    c1 = tl.minimum(c0 + CHUNK, N)
    f = tl.load(cols_ptr + tl.load(order_ptr + c1 - 1))
    s0 = tl.load(fo_ptr + f)
    s1 = tl.load(fo_ptr + f + 1)
    owner = (s0 >= c0) & (s1 > c1)
    last_chunk = tl.where(owner, (s1 - 1) // CHUNK, p)
    slot = tl.where(s0 == c0, 0, 1)
    acc = tl.load(part_ptr + (p * 2 + slot) * D + dofs, mask=tl.where(owner, dmask, False), other=0.0)
    more = tl.zeros([BLOCK_P, BLOCK_D], dtype=tl.float32)
    for q0 in range(p + 1, last_chunk + 1, BLOCK_P):
        q = q0 + tl.arange(0, BLOCK_P)
        qmask = q <= last_chunk
        more += tl.load(part_ptr + (q * 2)[:, None] * D + dofs[None, :], mask=qmask[:, None] & dmask[None, :],
                        other=0.0)
    acc += tl.sum(more, axis=0)
    tl.store(out_ptr + f * stride_o0 + dofs * stride_o1, acc.to(out_ptr.dtype.element_ty), mask=tl.where(owner, dmask, False))


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


# Chunk of feature-ordered entries per program in the weight gradients. Part of the summation
# order, so it is fixed (never autotuned): the same inputs give the same bits on every run.
CHUNK = 32
BLOCK_P = 16  # partials added per step of the fix-up
BLOCK_F = 32  # rows of never-fired features zeroed per program


def _block_d(d: int) -> int:
    return max(16, min(256, triton.next_power_of_2(d)))


def csr_gather_sum(
    table: Tensor, idx: Tensor, weights: Tensor, offsets: Tensor, bias: Tensor | None = None,
    out: Tensor | None = None, out_dtype: torch.dtype | None = None, k: int | None = None,
) -> Tensor:
    """out[s] = sum_{e in offsets[s]:offsets[s+1]} weights[e] * table[idx[e]] (+ bias); fp32 accumulate.

    With `k` (every segment holds exactly k entries, `offsets` = arange * k) the kernel takes the
    fixed-width path and reads no offsets.
    """
    segs = offsets.numel() - 1
    d = table.shape[1]
    if out is None:
        out = torch.empty(segs, d, dtype=out_dtype or table.dtype, device=table.device)
    if segs == 0 or d == 0:
        return out
    # Rows of a token gathered per step (TopK's k <= 32 in one step), and columns per program:
    # 512 bytes of each row, so a bf16 table is read in blocks as wide (in bytes) as fp32's.
    block_e = min(32, triton.next_power_of_2(k)) if k else 16
    bd = min(_block_d(d), 512 // table.element_size())
    _token_bag[(segs, triton.cdiv(d, bd))](
        table, table.stride(0), table.stride(1),
        idx, weights, offsets, bias if bias is not None else table,
        out, out.stride(0), out.stride(1),
        d,
        K=k or 0, HAS_BIAS=bias is not None, BLOCK_E=block_e, BLOCK_D=bd,
    )
    return out


def decode_forward(
    vals: Tensor, cols: Tensor, offsets: Tensor, k: int | None, W_dec: Tensor, b_dec: Tensor | None,
    out: Tensor | None = None,
) -> Tensor:
    """x_hat[b] = sum over b's entries of vals * W_dec[cols] (+ b_dec)."""
    return csr_gather_sum(W_dec, cols, vals, offsets, b_dec, out=out, k=k)


def encoder_input_grad(
    g: Tensor, cols: Tensor, offsets: Tensor, k: int | None, W_enc_t: Tensor, out: Tensor | None = None
) -> Tensor:
    """dx = sparse(g) W_enc^T, with `W_enc_t` the `[F, d]` view of the encoder (any strides)."""
    return csr_gather_sum(W_enc_t, cols, g, offsets, None, out=out, k=k)


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


def feature_segment_sum(
    table: Tensor, rows: Tensor, cols: Tensor, w: Tensor, by_feature: tuple[Tensor, Tensor],
    out: Tensor | None = None, out_dtype: torch.dtype | None = None,
) -> Tensor:
    """out[f] = sum over the entries e of feature f of w[e] * table[rows[e]], `[F, d]`, without atomics.

    `by_feature` is the reverse index `(order, fo)` (`codes.feature_index`); within a feature the
    entries are summed in that order, in chunks of `CHUNK` (see the module docstring), so the
    result is bit-identical run to run. A `table` with row stride 0 is one row read for every
    entry (the bias gradient's column of ones).
    """
    order, fo = by_feature
    f = fo.numel() - 1
    n, d = cols.numel(), table.shape[1]
    if out is None:
        out = torch.empty(f, d, dtype=out_dtype or table.dtype, device=table.device)
    if f == 0 or d == 0:
        return out
    if n == 0:
        return out.zero_()
    bd = min(128, _block_d(d))  # a [CHUNK, 128] fp32 tile and its scan stay in registers
    n_chunks = triton.cdiv(n, CHUNK)
    part = torch.empty(n_chunks * 2, d, dtype=torch.float32, device=table.device)
    grid_d = triton.cdiv(d, bd)
    _feature_chunk_sums[(n_chunks + triton.cdiv(f, BLOCK_F), grid_d)](
        table, table.stride(0), table.stride(1),
        order, rows, cols, w, fo,
        out, out.stride(0), out.stride(1), part,
        n, f, d, n_chunks,
        CHUNK=CHUNK, BLOCK_F=BLOCK_F, BLOCK_D=bd,
        num_warps=8,  # 79 registers for sm_90 (4 warps: 144), so more chunks are in flight per SM
    )
    _feature_chunk_fixup[(n_chunks, grid_d)](
        order, cols, fo, out, out.stride(0), out.stride(1), part, n, d,
        CHUNK=CHUNK, BLOCK_P=BLOCK_P, BLOCK_D=bd,
    )
    return out


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
    return feature_segment_sum(grad_out, rows, cols, vals, by_feature, out=out)


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
    by_feature = by_feature if by_feature is not None else feature_index(cols, num_features)
    ones = g.new_ones(1, 1).expand(cols.numel() or 1, 1)  # row stride 0: every entry reads the one row
    return feature_segment_sum(ones, cols, cols, g, by_feature, out_dtype=g.dtype).view(-1)
