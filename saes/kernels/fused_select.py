"""TopK selection fused with the encoder matmul: the `[B, F]` pre-activations never reach memory.

The unfused path writes `pre = x @ W_enc + b_enc` (`B x F`, 1 GiB in bf16 at B 4096, F 131072)
and reads it back for `torch.topk`; that round trip, not the matmul, is most of a GPU step's
dense work. Here each program owns `BM` tokens and a chunk of features: it computes its
`[BM, BN]` tiles of `pre` one after another (fp32 accumulation), and keeps the running top-KP of
each token (KP = k rounded up to a power of two) in registers, inserting a tile's keys while they
beat the smallest kept one (`_insert`; `tl.topk`'s bitonic sort costs more per tile, and under the
interpreter its xor reductions run element by element; `merge="bitonic"` keeps that variant to
measure against on a GPU). Only KP candidates per token and chunk
are written; `torch.topk` over those `[B, chunks * KP]` candidates makes the final choice, so the
result is exact whatever the tiling.

A value and its feature id travel as one int64 key: the fp32 bits mapped to a signed integer
that orders like the float, in the high half, and `2^32 - 1 - feature` in the low half. Sorting
keys sorts values; an exact tie goes to the lower feature id, the same way every run.

The result is what `select_topk` returns on the dense pre-activations (the raw pre-activations
at the chosen places; `encode` applies the ReLU), up to ties and fp summation order. With
`matmul_dtype=bf16` the products are bf16 and the sums fp32, rounded to bf16 before ranking as
a bf16 addmm's output is; fp32 inputs are cast to bf16 once per call, as on the unfused path
(casting fp32 tiles in the kernel would double every tile's reads, and each block of tokens
re-reads all of `W_enc`). fp32 inputs use IEEE fp32 dot products (not TF32), as torch's matmul does by default.

Off by default (`SAE_SELECT=dense`, see `saes.kernels.dispatch.fused_select_enabled`) until a
GPU run of `benchmarks/gpu_check.py` measures it against the unfused step; the tile sizes below
are first guesses for an H100/H200, not tuned.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from workbench.errors import WorkbenchError

_LOW = 0xFFFFFFFF
MERGES = ("insert", "bitonic")
MAX_K = 256  # a token's running top-k lives in registers: wider k takes the unfused path


@triton.jit
def _round_bf16(v):
    """fp32 -> the nearest bf16 (ties to even), kept in fp32 (the interpreter's own cast truncates)."""
    bits = v.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _value_key(acc, cols):
    """int64 keys that order like (value, -feature): fp32 bits made monotone, feature id below."""
    bits = acc.to(tl.int32, bitcast=True)
    bits = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    low = (~cols).to(tl.uint32, bitcast=True).to(tl.int64)  # 2^32 - 1 - feature, zero-extended
    return (bits.to(tl.int64) << 32) | low[None, :]


@triton.jit
def _encode_topk(
    x_ptr, stride_x0, stride_x1,
    w_ptr, stride_w0, stride_w1,
    b_ptr, out_ptr,
    B, D, F, tiles_per_chunk,
    KP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    BF16: tl.constexpr, EMULATE_BF16: tl.constexpr, BITONIC: tl.constexpr,
):
    """out[row, chunk, :] = the KP largest keys of row's pre-activations within the chunk."""
    pid_m = tl.program_id(0)
    chunk = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < B
    x_rows = rows.to(tl.int64) * stride_x0
    # distinct padding keys below every real one, so `run == its min` always names one place
    run = tl.zeros([BM, KP], tl.int64) + (tl.arange(0, KP).to(tl.int64) - 9223372036854775807)[None, :]
    f_begin = chunk * tiles_per_chunk * BN
    f_end = tl.minimum(f_begin + tiles_per_chunk * BN, F)
    for f0 in range(f_begin, f_end, BN):
        cols = f0 + tl.arange(0, BN)
        cmask = cols < F
        w_cols = cols.to(tl.int64) * stride_w1
        acc = tl.zeros([BM, BN], dtype=tl.float32)
        for k0 in range(0, D, BK):
            ks = k0 + tl.arange(0, BK)
            kmask = ks < D
            a = tl.load(x_ptr + x_rows[:, None] + ks[None, :] * stride_x1,
                        mask=rmask[:, None] & kmask[None, :], other=0.0)
            w = tl.load(w_ptr + ks[:, None].to(tl.int64) * stride_w0 + w_cols[None, :],
                        mask=kmask[:, None] & cmask[None, :], other=0.0)
            if EMULATE_BF16:  # the interpreter's bf16 dot is wrong; bf16 x bf16 products are exact in fp32
                acc = tl.dot(_round_bf16(a.to(tl.float32)), _round_bf16(w.to(tl.float32)), acc,
                             input_precision="ieee")
            elif BF16:
                acc = tl.dot(a.to(tl.bfloat16), w.to(tl.bfloat16), acc)
            else:
                acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
        bias = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        if BF16:  # rank what a bf16 addmm would have written: bf16 bias, one rounding of the sum
            acc = _round_bf16(acc + _round_bf16(bias)[None, :])
        else:
            acc += bias[None, :]
        # padded places and padded tokens get the smallest key, so they never enter (or prolong) a merge
        key = tl.where(rmask[:, None] & cmask[None, :], _value_key(acc, cols), -9223372036854775808)
        if BITONIC:  # the alternative to measure on a GPU: sort the tile's top KP, merge by a second sort
            if tl.max((tl.max(key, axis=1) > tl.min(run, axis=1)).to(tl.int32), axis=0) > 0:
                best = tl.topk(key, KP, dim=1)
                run = tl.topk(tl.reshape(tl.join(run, best), [BM, 2 * KP]), KP, dim=1)
        else:
            run = _insert(run, key)
    n_chunks = tl.num_programs(1)
    out_rows = rows.to(tl.int64) * (n_chunks * KP) + chunk * KP
    tl.store(out_ptr + out_rows[:, None] + tl.arange(0, KP)[None, :], run, mask=rmask[:, None])


@triton.jit
def _insert(run, key):
    """Merge a tile's keys into each row's running top-KP: while some row's best remaining tile
    key beats its smallest kept key, that key takes its place. Keys are distinct, so each `==`
    names one place. Past the first tiles of a chunk few keys beat the KP-th, so this costs a
    few max/min passes per tile where a sort of the tile would cost log^2(BN) passes."""
    tmax = tl.max(key, axis=1)
    rmin = tl.min(run, axis=1)
    better = tmax > rmin
    while tl.max(better.to(tl.int32), axis=0) > 0:
        run = tl.where((run == rmin[:, None]) & better[:, None], tmax[:, None], run)
        key = tl.where((key == tmax[:, None]) & better[:, None], -9223372036854775808, key)
        tmax = tl.max(key, axis=1)
        rmin = tl.min(run, axis=1)
        better = tmax > rmin
    return run


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def decode_keys(keys: Tensor) -> tuple[Tensor, Tensor]:
    """(fp32 values, int64 feature ids) of int64 keys made by `_value_key`."""
    hi = (keys >> 32).to(torch.int32)
    bits = torch.where(hi < 0, hi ^ 0x7FFFFFFF, hi)
    return bits.view(torch.float32), _LOW - (keys & _LOW)


def _tiles(b: int, k: int, bf16: bool) -> tuple[int, int, int]:
    """(BM, BN, BK) first guesses: 128-wide feature tiles; fewer tokens per program as k grows,
    so the running top-k (BM x KP int64 keys) stays in registers; no more rows than the batch."""
    kp = triton.next_power_of_2(k)
    bm = min(64 if kp <= 64 else 32 if kp <= 128 else 16, max(16, triton.next_power_of_2(b)))
    return bm, 128, 64 if bf16 else 32


def fused_topk(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, matmul_dtype: torch.dtype | None = None, *,
    block_m: int | None = None, block_n: int | None = None, block_k: int | None = None,
    chunks: int | None = None, merge: str = "insert",
) -> tuple[Tensor, Tensor]:
    """Per-token top-k of `x @ W_enc + b_enc` without the dense matrix: `(values, feature ids)`, `[B, k]`.

    Values are the raw pre-activations (no ReLU), sorted largest first, in `matmul_dtype` (default
    `x.dtype`); ids are int64. `x` is `[B, d]`, `W_enc` `[d, F]` with any strides (the `.t()` of an
    `[F, d]` parameter is the layout that reads best), `b_enc` `[F]`. Any k from 1 to F works up
    to `MAX_K`, wider than a tile too. The block sizes, the number of feature chunks and the in-tile
    `merge` ("insert", or "bitonic": `tl.topk` of each tile) are for tests and tuning.
    """
    b, d = x.shape
    f = W_enc.shape[1]
    if not 1 <= k <= min(f, MAX_K):
        raise WorkbenchError(f"fused TopK k={k} must be between 1 and the number of features ({f}), "
                             f"at most {MAX_K}")
    mdt = matmul_dtype or x.dtype
    if mdt not in (torch.float32, torch.bfloat16):
        raise WorkbenchError(f"fused TopK runs in float32 or bfloat16, not {mdt}")
    bf16 = mdt == torch.bfloat16
    if bf16:
        x, W_enc = x.to(mdt), W_enc.to(mdt)  # strides kept: the [d, F] view of an [F, d] copy
    kp = triton.next_power_of_2(k)
    bm, bn, bk = _tiles(b, k, bf16)
    if merge not in MERGES:
        raise WorkbenchError(f"unknown fused TopK merge {merge!r}; valid choices: {', '.join(MERGES)}")
    bm, bn, bk = block_m or bm, block_n or bn, block_k or bk
    if merge == "bitonic":
        bn = max(bn, kp)  # tl.topk takes at most the tile's width
    n_tiles = triton.cdiv(f, bn)
    row_blocks = triton.cdiv(b, bm)
    if chunks is None:  # about a thousand programs: enough to fill a GPU, few candidates to merge
        chunks = max(1, min(n_tiles, triton.cdiv(1024, row_blocks)))
    tiles_per_chunk = triton.cdiv(n_tiles, chunks)
    chunks = triton.cdiv(n_tiles, tiles_per_chunk)
    keys = torch.empty(b, chunks, kp, dtype=torch.int64, device=x.device)
    if b:
        _encode_topk[(row_blocks, chunks)](
            x, x.stride(0), x.stride(1), W_enc, W_enc.stride(0), W_enc.stride(1), b_enc, keys,
            b, d, f, tiles_per_chunk,
            KP=kp, BM=bm, BN=bn, BK=bk, BF16=bf16, EMULATE_BF16=bf16 and _interpreted(),
            BITONIC=merge == "bitonic",
            num_warps=8 if bm * bn >= 8192 else 4,
        )
    keys = keys.view(b, chunks * kp).topk(k, dim=1, sorted=True).values
    vals, ids = decode_keys(keys)
    return vals.to(mdt), ids


def fusable_k(selectors) -> int | None:
    """The widest k among the TopK selectors over all features when every selector is a TopK (one
    fused pass serves them all: each takes the first k of the sorted result; a TopK among listed
    features, AuxK's, gets `select_topk_among`), else None: another rule needs the dense matrix."""
    from saes.kernels.selectors import TopK

    if not selectors or not all(isinstance(s, TopK) for s in selectors):
        return None
    ks = [s.k for s in selectors if s.features is None]
    return max(ks) if ks and max(ks) <= MAX_K else None


def select_topk_among(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, features: Tensor, mdt: torch.dtype):
    """`select_topk(pre, k, features)` without the dense `pre`: a matmul over the listed features
    only (AuxK's dead features, usually few), in the same dtype as the unfused path's."""
    from saes.kernels.selectors import Selection

    b = x.shape[0]
    features = features.to(x.device, torch.long)
    kk = min(k, features.numel())
    if kk == 0:
        return Selection(x.new_zeros(b, 0, dtype=mdt), None, features.new_zeros(b, 0), None, 0)
    pre = torch.addmm(b_enc[features].to(mdt), x.to(mdt), W_enc[:, features].to(mdt))
    v, j = pre.topk(kk, dim=1, sorted=False)
    return Selection(v, None, features[j], None, kk)
