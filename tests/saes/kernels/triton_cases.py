"""Triton kernels against the torch path and dense references; run by test_triton_kernels.py.

Not collected on its own (the name does not start with `test_`): Triton must see
`TRITON_INTERPRET=1` before the kernels are defined, so test_triton_kernels.py runs this file in a
fresh pytest process, on the CPU under the interpreter at small odd shapes, or on a GPU at full
shapes (`SAE_TEST_DEVICE=cuda`).
"""

from __future__ import annotations

import os

import pytest
import torch
import triton
import triton.language as tl

from saes.kernels import BatchTopK, FeatureChoice, SparseCodes, Threshold, TopK, deterministic, encode, sparse_decode
from saes.kernels import torch_ops as R
from saes.kernels import triton_ops as T
from saes.kernels.triton_ops import _row_start

DEVICE = os.environ.get("SAE_TEST_DEVICE", "cpu")
if DEVICE == "cuda":
    SHAPES = [(4096, 768, 32768, 32), (4093, 771, 32771, 129)]  # full and odd full-size shapes
else:
    SHAPES = [(37, 45, 53, 7), (19, 130, 157, 5)]  # odd, not multiples of any block size
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    assert not torch.isnan(out).any(), "unwritten (poisoned) or NaN output"
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def poisoned(*shape, dtype=torch.float32) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def make_codes(b, f, k, gen, fixed: bool) -> SparseCodes:
    if fixed:
        idx = torch.argsort(torch.rand(b, f, generator=gen), dim=1)[:, :k]
        return SparseCodes.from_topk(torch.randn(b, k, generator=gen), idx, f)
    mask = torch.rand(b, f, generator=gen) < (k / f)
    mask[1] = False  # an empty token
    mask[:, 2] = False  # an untouched feature
    mask[:, 3] = True  # a feature every token uses
    rows, cols = mask.nonzero().unbind(1)
    return SparseCodes.from_rows_cols(torch.randn(rows.numel(), generator=gen), rows, cols, b, f)




@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fixed", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_building_blocks(shape, fixed, dtype):
    b, d, f, k = shape
    gen = torch.Generator().manual_seed(hash((shape, fixed, str(dtype))) % 2**31)
    c32 = make_codes(b, f, k, gen, fixed)
    c = c32.to(DEVICE, dtype)
    W = torch.randn(f, d, generator=gen).to(DEVICE, dtype)
    bias = torch.randn(d, generator=gen).to(DEVICE, dtype)
    go = torch.randn(b, d, generator=gen).to(DEVICE, dtype)
    x = torch.randn(b, d, generator=gen).to(DEVICE, dtype)
    # references in fp64 on the same (rounded) inputs
    dense = c.to_dense().double()
    Wd, bd, god, xd = W.double(), bias.double(), go.double(), x.double()
    tol = TOL[dtype]

    out = T.decode_forward(c.vals, c.cols, c.offsets, c.k, W, bias, out=poisoned(b, d, dtype=dtype))
    assert rel(out, dense @ Wd + bd) < tol
    assert rel(out, R.decode_forward(c.vals, c.cols, c.offsets, c.k, W, bias)) < tol
    out = T.decode_forward(c.vals, c.cols, c.offsets, c.k, W, None, out=poisoned(b, d, dtype=dtype))
    assert rel(out, dense @ Wd) < tol

    # the encoder input gradient reads W_enc^T through strides: from an [F, d] and a [d, F] parameter
    for W_t in (W, W.t().contiguous().t()):
        out = T.encoder_input_grad(c.vals, c.cols, c.offsets, c.k, W_t, out=poisoned(b, d, dtype=dtype))
        assert rel(out, dense @ Wd) < tol

    g = T.grad_at_active(go, W, c.rows, c.cols, out=poisoned(c.nnz))
    assert rel(g, (god @ Wd.t())[c.rows, c.cols]) < tol
    assert rel(g, R.grad_at_active(go, W, c.rows, c.cols)) < tol

    with deterministic(True):
        dW = T.decoder_weight_grad(c.vals, c.rows, c.cols, go, f, c.by_feature(), out=poisoned(f, d, dtype=dtype))
        assert rel(dW, dense.t() @ god) < tol
        dWe = T.encoder_weight_grad(x, c.vals, c.rows, c.cols, f, None, out=poisoned(f, d, dtype=dtype))
        assert rel(dWe, (xd.t() @ dense).t()) < tol
        db = T.bias_grad(c.vals.float(), c.cols, f, c.by_feature())
        assert rel(db, dense.sum(0)) < tol
    with deterministic(False):  # fp32 atomics
        dW = T.decoder_weight_grad(c.vals, c.rows, c.cols, go, f)
        assert dW.dtype == dtype and rel(dW, dense.t() @ god) < tol
        db = T.bias_grad(c.vals.float(), c.cols, f)
        assert rel(db, dense.sum(0)) < tol


def test_deterministic_mode_is_bitwise_repeatable():
    b, d, f, k = SHAPES[-1]
    gen = torch.Generator().manual_seed(5)
    c = make_codes(b, f, k, gen, False).to(DEVICE, torch.float32)
    go = torch.randn(b, d, generator=gen).to(DEVICE)
    with deterministic(True):
        runs = [T.decoder_weight_grad(c.vals, c.rows, c.cols, go, f) for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def _selectors(f, gen):
    return [
        TopK(5),
        TopK(3, features=torch.randperm(f, generator=gen)[: f // 3].to(DEVICE)),
        BatchTopK(4),
        FeatureChoice(torch.randint(0, 6, (f,), generator=gen).to(DEVICE)),
        Threshold(torch.full((f,), 0.3, device=DEVICE)),
    ]


@pytest.mark.parametrize("sel_i", range(5))
def test_encode_decode_triton_equals_torch_path(sel_i, monkeypatch):
    b, d, f, _ = SHAPES[0]
    gen = torch.Generator().manual_seed(40 + sel_i)
    sel = _selectors(f, gen)[sel_i]
    params = [
        torch.randn(b, d, generator=gen),
        torch.randn(f, d, generator=gen) / d**0.5,
        torch.randn(f, generator=gen) * 0.1,
        torch.randn(f, d, generator=gen),
        torch.randn(d, generator=gen),
    ]
    results = {}
    for backend_name in ("torch", "triton"):
        monkeypatch.setenv("SAE_KERNELS", backend_name)
        x, We, be, Wd, bd = [p.to(DEVICE).requires_grad_(True) for p in params]
        (codes,) = encode(x, We.t(), be, [sel])
        out = sparse_decode(codes, Wd, bd)
        loss = out.pow(2).sum() + codes.vals.sum()
        grads = torch.autograd.grad(loss, [x, We, be, Wd, bd])
        results[backend_name] = (out, grads, codes.cols, codes.rows)
    (o1, g1, c1, r1), (o2, g2, c2, r2) = results["torch"], results["triton"]
    assert torch.equal(c1, c2) and torch.equal(r1, r2)
    assert rel(o2, o1) < 1e-5
    for a, r in zip(g2, g1):
        assert rel(a, r) < 1e-5


@pytest.mark.parametrize("det", [True, False])
def test_training_steps_agree_with_torch_path(det, monkeypatch):
    """Same seed, same batches: the Triton run follows the torch run step by step."""
    b, d, f, k = SHAPES[0]
    gen = torch.Generator().manual_seed(7)
    data = [torch.randn(b, d, generator=gen) for _ in range(3)]
    init = [torch.randn(f, d, generator=gen) / d**0.5, torch.zeros(f), torch.randn(f, d, generator=gen) / d**0.5,
            torch.zeros(d)]
    traces = {}
    for backend_name in ("torch", "triton"):
        monkeypatch.setenv("SAE_KERNELS", backend_name)
        We, be, Wd, bd = [p.clone().to(DEVICE).requires_grad_(True) for p in init]
        opt = torch.optim.Adam([We, be, Wd, bd], lr=1e-3)
        trace = []
        with deterministic(det):
            for xb in data:
                xb = xb.to(DEVICE)
                (codes,) = encode(xb - bd, We.t(), be, [TopK(k)])
                loss = (sparse_decode(codes, Wd, bd) - xb).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                trace.append([loss.detach().clone()] + [p.detach().clone() for p in (We, be, Wd, bd)])
        traces[backend_name] = trace
    for step, (a, r) in enumerate(zip(traces["triton"], traces["torch"])):
        for name, ta, tr in zip(["loss", "W_enc", "b_enc", "W_dec", "b_dec"], a, r):
            assert rel(ta, tr) < 1e-4, f"step {step} {name}"


def test_empty_aux_selection_on_triton(monkeypatch):
    monkeypatch.setenv("SAE_KERNELS", "triton")
    b, d, f, _ = SHAPES[0]
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(b, d, generator=gen).to(DEVICE)
    W = torch.randn(f, d, generator=gen).to(DEVICE).requires_grad_(True)
    be = torch.zeros(f, device=DEVICE, requires_grad=True)
    Wd = torch.randn(f, d, generator=gen).to(DEVICE).requires_grad_(True)
    main, aux = encode(x, W.t(), be, [TopK(3), TopK(4, features=torch.tensor([], dtype=torch.long, device=DEVICE))])
    out = sparse_decode(aux, Wd, None)
    assert aux.nnz == 0 and out.shape == (b, d) and not out.any()
    (sparse_decode(main, Wd).pow(2).sum() + out.sum()).backward()
    assert torch.isfinite(W.grad).all() and W.grad.any() and torch.isfinite(Wd.grad).all()


@triton.jit
def _row_start_probe(rows_ptr, out_ptr, stride, N: tl.constexpr):
    i = tl.arange(0, N)
    row = tl.load(rows_ptr + i)  # int32, as a program id is
    tl.store(out_ptr + i, _row_start(row, stride))


def test_output_row_offsets_are_int64_past_2_to_the_31():
    """The output offset of `_csr_gather_sum` (segment x row stride) at segments x d >= 2^31, e.g.
    F 524288 at d 4096, without allocating such an output: the offset helper the kernel uses, run
    on int32 row ids as the kernel's program ids are."""
    rows = torch.tensor([0, 1, 524287, 524288, 2**31 // 4096 + 5, 2**31 - 1, 7, 3], dtype=torch.int32, device=DEVICE)
    for stride in (4096, 3, 65536):
        out = torch.zeros(8, dtype=torch.int64, device=DEVICE)
        _row_start_probe[(1,)](rows, out, stride, N=8)
        assert out.tolist() == [int(r) * stride for r in rows.tolist()], stride
