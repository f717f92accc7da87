"""The deterministic weight gradients and the token bag, against the torch path and dense references.

Run by test_feature_grads.py in a fresh process (Triton reads `TRITON_INTERPRET` when a kernel is
defined): on the CPU under the interpreter at small odd shapes, or compiled on a GPU at full
shapes (`SAE_TEST_DEVICE=cuda`). Not collected on its own (the name does not start with `test_`).
"""

from __future__ import annotations

import os

import pytest
import torch
from triton.runtime import interpreter

from saes.kernels import SparseCodes, deterministic, feature_index
from saes.kernels import torch_ops as R
from saes.kernels import triton_ops as T

DEVICE = os.environ.get("SAE_TEST_DEVICE", "cpu")
GPU = DEVICE == "cuda"
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
# (tokens, d, features, k): F and d multiples of no block size; tokens enough that a feature on
# every token spans several chunks of the reverse index
SHAPES = [(4096, 771, 32771, 33), (4093, 768, 131072, 32)] if GPU else [(40, 21, 23, 3), (70, 9, 7, 2)]


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    assert not torch.isnan(out).any(), "unwritten (poisoned) or NaN output"
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def codes_with_extremes(b: int, f: int, k: int, gen: torch.Generator, fixed: bool) -> SparseCodes:
    """Random codes where feature 0 fires on every token and the last feature and feature 1 never fire."""
    if fixed:
        rest = torch.rand(b, f - 3, generator=gen).topk(k - 1, dim=1).indices + 2  # distinct, among 2 .. f-2
        idx = torch.cat([torch.zeros(b, 1, dtype=torch.long), rest], 1)
        return SparseCodes.from_topk(torch.randn(b, k, generator=gen), idx, f)
    mask = torch.rand(b, f, generator=gen) < (k / f)
    mask[:, 0] = True
    mask[:, 1] = False
    mask[:, -1] = False
    mask[3] = False  # an empty token
    mask[3, 0] = False
    rows, cols = mask.nonzero().unbind(1)
    return SparseCodes.from_rows_cols(torch.randn(rows.numel(), generator=gen), rows, cols, b, f)




@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fixed", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_grads_match_the_references(shape, fixed, dtype):
    b, d, f, k = shape
    gen = torch.Generator().manual_seed(hash((shape, fixed, str(dtype))) % 2**31)
    c = codes_with_extremes(b, f, k, gen, fixed).to(DEVICE, dtype)
    go = torch.randn(b, d, generator=gen).to(DEVICE, dtype)
    x = torch.randn(b, d, generator=gen).to(DEVICE, dtype)
    dense = c.to_dense().double()
    with deterministic(True):
        dW = T.decoder_weight_grad(c.vals, c.rows, c.cols, go, f, out=torch.full((f, d), float("nan"), dtype=dtype,
                                                                                device=DEVICE))
        dWe = T.encoder_weight_grad(x, c.vals, c.rows, c.cols, f, c.by_feature())
        db = T.bias_grad(c.vals.float(), c.cols, f, c.by_feature())
    assert dW.dtype == dtype and dWe.dtype == dtype
    assert rel(dW, dense.t() @ go.double()) < TOL[dtype]
    assert rel(dWe, dense.t() @ x.double()) < TOL[dtype]
    assert rel(db, dense.sum(0)) < 1e-5
    assert not dW[1].any() and not dW[-1].any() and not dWe[-1].any() and db[1] == 0 and db[-1] == 0
    ref = R.decoder_weight_grad(c.vals.cpu(), c.rows.cpu(), c.cols.cpu(), go.cpu(), f)
    assert rel(dW.cpu(), ref) < TOL[dtype]


def test_weight_grads_are_bitwise_repeatable():
    b, d, f, k = SHAPES[0]
    gen = torch.Generator().manual_seed(3)
    c = codes_with_extremes(b, f, k, gen, False).to(DEVICE, torch.float32)
    go = torch.randn(b, d, generator=gen).to(DEVICE)
    with deterministic(True):
        runs = [T.decoder_weight_grad(c.vals, c.rows, c.cols, go, f) for _ in range(2)]
        runs += [T.decoder_weight_grad(c.vals, c.rows, c.cols, go, f, feature_index(c.cols, f))]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def record_launches(monkeypatch) -> list[tuple[str, int]]:
    """(kernel name, programs on the first grid axis) of every interpreted launch."""
    seen: list[tuple[str, int]] = []
    run = interpreter.InterpretedFunction.run

    def spy(self, *args, grid, **kwargs):
        g = grid(kwargs) if callable(grid) else grid
        seen.append((self.fn.__name__, int(g[0])))
        return run(self, *args, grid=grid, **kwargs)

    monkeypatch.setattr(interpreter.InterpretedFunction, "run", spy)
    return seen


@pytest.mark.skipif(GPU, reason="counts interpreted launches (the CPU run)")
def test_weight_grad_work_per_program_is_bounded(monkeypatch):
    """Neither a wide F of mostly unfired features nor one feature on every token puts the work
    on a few programs: the entries are split into fixed chunks, and the programs of the launch
    grow with the entries, not one per feature."""
    seen = record_launches(monkeypatch)
    gen = torch.Generator().manual_seed(4)
    # wide and almost empty: 40 entries over 2048 features
    idx = torch.randint(0, 2048, (40, 1), generator=gen)
    c = SparseCodes.from_topk(torch.randn(40, 1, generator=gen), idx, 2048).to(DEVICE, torch.float32)
    with deterministic(True):
        T.decoder_weight_grad(c.vals, c.rows, c.cols, torch.randn(40, 3).to(DEVICE), 2048)
    assert seen and sum(n for _, n in seen) <= 40 + 2048 // 8, seen
    seen.clear()
    # narrow and heavy: 3 features, each on all 300 tokens
    idx = torch.arange(3).repeat(300, 1)
    c = SparseCodes.from_topk(torch.randn(300, 3, generator=gen), idx, 3).to(DEVICE, torch.float32)
    with deterministic(True):
        dW = T.decoder_weight_grad(c.vals, c.rows, c.cols, go := torch.randn(300, 5).to(DEVICE), 3)
    assert max(n for _, n in seen) >= 900 // 64, seen
    assert rel(dW, c.to_dense().double().t() @ go.double()) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_bag_fixed_width_reads_no_offsets(dtype):
    """Fixed-k codes (TopK) take the fixed-width path: the offsets are never read, so zeros there
    change nothing, also for a k wider than one tile of rows (70)."""
    b, d, f, _ = SHAPES[0]
    b, f = (b, f) if GPU else (24, 160)
    gen = torch.Generator().manual_seed(6)
    for k in (7, 70):
        c = codes_with_extremes(b, f, k, gen, True).to(DEVICE, dtype)
        W = torch.randn(f, d, generator=gen).to(DEVICE, dtype)
        bias = torch.randn(d, generator=gen).to(DEVICE, dtype)
        ref = c.to_dense().double() @ W.double() + bias.double()
        offsets = torch.zeros_like(c.offsets)
        out = T.decode_forward(c.vals, c.cols, offsets, k, W, bias)
        assert out.dtype == dtype and rel(out, ref) < TOL[dtype], k
        assert rel(out.cpu(), R.decode_forward(c.vals.cpu(), c.cols.cpu(), c.offsets.cpu(), k, W.cpu(),
                                               bias.cpu())) < TOL[dtype]
        gx = T.encoder_input_grad(c.vals, c.cols, offsets, k, W.t().contiguous().t())
        assert rel(gx, c.to_dense().double() @ W.double()) < TOL[dtype], k


@pytest.mark.parametrize("det", [False, True])
def test_reverse_index_is_built_only_when_read(det, monkeypatch):
    """The Triton path's atomic reductions read no reverse index, so a training step in that mode
    sorts nothing; in deterministic mode both weight gradients share one sort of the entries."""
    monkeypatch.setenv("SAE_KERNELS", "triton")
    from saes.kernels import TopK, encode, sparse_decode
    from saes.kernels import codes as codes_module

    b, d, f, k = SHAPES[0]
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(b, d, generator=gen).to(DEVICE)
    W = (torch.randn(f, d, generator=gen) / d**0.5).to(DEVICE).requires_grad_(True)
    be = torch.zeros(f, device=DEVICE, requires_grad=True)
    Wd = torch.randn(f, d, generator=gen).to(DEVICE).requires_grad_(True)
    sorts = []
    build = codes_module.feature_index
    monkeypatch.setattr(codes_module, "feature_index", lambda *a, **kw: sorts.append(1) or build(*a, **kw))
    with deterministic(det):
        (codes,) = encode(x, W.t(), be, [TopK(k)])
        sparse_decode(codes, Wd).pow(2).sum().backward()
    assert len(sorts) == (1 if det else 0)
    assert W.grad is not None and Wd.grad is not None and be.grad is not None
