"""The fused encoder-matmul + TopK kernel against torch.topk on the dense pre-activations.

Run by test_fused_select.py in a fresh pytest process (Triton must see `TRITON_INTERPRET=1`
before the kernel is defined): on the CPU under the interpreter at small odd shapes, or on a GPU
(`SAE_TEST_DEVICE=cuda`) at training shapes. The reference is written in torch's own terms:
`pre = x @ W + b` in float64 on the same (rounded) inputs, then `pre.topk(k)`; the fused kernel
must pick the same places up to ties and report the same raw pre-activations there.
"""

from __future__ import annotations

import os

import pytest
import torch

from saes.kernels import BatchTopK, TopK, encode, sparse_decode
from saes.kernels.fused_select import MAX_K, fusable_k, fused_topk

DEVICE = os.environ.get("SAE_TEST_DEVICE", "cpu")
if DEVICE == "cuda":
    SHAPES = [(4096, 768, 131072, 32), (4093, 771, 32771, 128), (1000, 768, 4608, 64)]
else:
    SHAPES = [(37, 45, 157, 5), (19, 130, 83, 32), (33, 20, 300, 128)]  # no size a multiple of a tile
# encode's own tests stay small on a GPU too: fused and unfused there sum in different orders, and
# over thousands of rows some k-th place would come within fp32 rounding of the next one
ENCODE_SHAPES = [(37, 45, 157, 5), (19, 130, 83, 32)]
SMALL_TILES = {"block_m": 16, "block_n": 32, "block_k": 16}  # several tiles and chunks even at small shapes


def dense_reference(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """pre = x W + b in float64 on the inputs as given (already rounded to their dtype)."""
    return x.double() @ W.double() + b.double()


def assert_topk_up_to_ties(vals: torch.Tensor, idx: torch.Tensor, pre: torch.Tensor, k: int, tol: float) -> None:
    """`vals`/`idx` is a top-k of the dense `pre`: same sorted values, each at its place, and every
    place clearly above the k-th value (more than `tol` above) chosen; the rest may differ only
    among places tied with the k-th value."""
    b, f = pre.shape
    vals, idx = vals.to(pre.device, torch.float64), idx.to(pre.device)
    assert vals.shape == (b, k) and idx.shape == (b, k) and idx.dtype == torch.long
    assert int(idx.min()) >= 0 and int(idx.max()) < f
    ordered = idx.sort(dim=1).values
    assert bool((ordered[:, 1:] != ordered[:, :-1]).all()), "a feature chosen twice for one token"
    scale = pre.abs().max().clamp_min(1.0)
    ref_v = pre.topk(k, dim=1).values
    assert torch.allclose(vals.sort(dim=1, descending=True).values, ref_v, atol=tol * scale, rtol=0)
    assert torch.allclose(pre.gather(1, idx), vals, atol=tol * scale, rtol=0), "a value is not pre at its place"
    kth = ref_v[:, -1:]
    clearly_in = pre > kth + tol * scale
    chosen = torch.zeros(b, f, dtype=torch.bool, device=pre.device).scatter_(1, idx, True)
    assert not (clearly_in & ~chosen).any(), "a place clearly in the top k was not chosen"
    assert not (chosen & (pre < kth - tol * scale)).any(), "a place clearly below the k-th value was chosen"


def inputs(b, d, f, seed, dtype=torch.float32, integer=False):
    gen = torch.Generator().manual_seed(seed)
    if integer:  # small integers: every dot product is exact, and most values tie with others
        x = torch.randint(0, 2, (b, d), generator=gen).float()
        W = torch.randint(0, 2, (f, d), generator=gen).float().t()
        bias = torch.randint(0, 2, (f,), generator=gen).float()
    else:
        x = torch.randn(b, d, generator=gen)
        W = (torch.randn(f, d, generator=gen) / d**0.5).t()  # [d, F] view of an [F, d] parameter, as encode gets it
        bias = torch.randn(f, generator=gen) * 0.1
    return x.to(DEVICE, dtype), W.to(DEVICE, dtype), bias.to(DEVICE, dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tiles", ["default", "small"])
def test_fp32_equals_torch_topk(shape, tiles):
    b, d, f, k = shape
    x, W, bias = inputs(b, d, f, seed=hash(shape) % 1000)
    opts = SMALL_TILES if tiles == "small" else {}
    vals, idx = fused_topk(x, W, bias, k, **opts)
    assert vals.dtype == torch.float32
    assert_topk_up_to_ties(vals, idx, dense_reference(x, W, bias), k, 1e-5)
    assert torch.equal(vals, vals.sort(dim=1, descending=True).values), "values come sorted, largest first"


def test_negative_pre_activations():
    """Every pre-activation below zero (a token no feature fires on): the k least negative win,
    as torch.topk picks them; encode's ReLU then zeroes them."""
    b, d, f, k = SHAPES[0]
    x, W, bias = inputs(b, d, f, seed=4)
    bias = bias - 20.0
    pre = dense_reference(x, W, bias)
    assert bool((pre < 0).all())
    vals, idx = fused_topk(x, W, bias, k, **SMALL_TILES)
    assert_topk_up_to_ties(vals, idx, pre, k, 1e-6)


def test_bitonic_merge_variant():
    """The tl.topk merge kept for GPU timing picks the same places (exact ties included)."""
    b, d, f, k = SHAPES[0]
    x, W, bias = inputs(b, d, f, seed=5)
    vals, idx = fused_topk(x, W, bias, k, merge="bitonic", **SMALL_TILES)
    assert_topk_up_to_ties(vals, idx, dense_reference(x, W, bias), k, 1e-5)
    x, W, bias = inputs(29, 5, 97, seed=6, integer=True)
    vals, idx = fused_topk(x, W, bias, 3, merge="bitonic", **SMALL_TILES)
    assert torch.equal(idx, fused_topk(x, W, bias, 3, **SMALL_TILES)[1]), "ties to the lower id either way"
    with pytest.raises(Exception, match="merge 'heap'"):
        fused_topk(x, W, bias, 3, merge="heap")


@pytest.mark.parametrize("k", [1, 3, 40])
def test_planted_exact_ties(k):
    """Integer inputs: the pre-activations are exact small integers, so the k-th value is tied
    with many places in most rows; the values must still be exactly torch.topk's."""
    b, d, f = 29, 5, 97
    x, W, bias = inputs(b, d, f, seed=k, integer=True)
    pre = dense_reference(x, W, bias)
    kth = pre.topk(k, dim=1).values[:, -1:]
    assert int(((pre == kth).sum(1) > 1).sum()) > b // 2, "the test needs ties at the boundary"
    vals, idx = fused_topk(x, W, bias, k, **SMALL_TILES)
    assert torch.equal(vals.double(), pre.topk(k, dim=1).values)
    assert_topk_up_to_ties(vals, idx, pre, k, 0.0)
    again = fused_topk(x, W, bias, k, block_m=32, block_n=64, chunks=1)  # other tiles, one chunk
    assert torch.equal(again[1], idx), "ties go to the lower feature id, whatever the tiling"


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_bf16_inputs_and_bf16_matmul_of_fp32_inputs(shape):
    b, d, f, k = shape
    x, W, bias = inputs(b, d, f, seed=3)
    xb, Wb, bb = x.bfloat16(), W.bfloat16(), bias.bfloat16()
    # bf16 inputs: bf16 products, fp32 accumulation; the values rounded to bf16 like a bf16 matmul's output
    pre = dense_reference(xb, Wb, bb)
    vals, idx = fused_topk(xb, Wb, bb, k, **SMALL_TILES)
    assert vals.dtype == torch.bfloat16
    assert_topk_up_to_ties(vals, idx, pre, k, 2**-7)
    # fp32 inputs chosen on a bf16 matmul (encode's matmul_dtype=bf16): the tiles are cast in the kernel
    pre32 = dense_reference(xb, Wb, bb)
    vals, idx = fused_topk(x, W, bias, k, torch.bfloat16)
    assert vals.dtype == torch.bfloat16
    assert_topk_up_to_ties(vals, idx, pre32, k, 2**-7)


def test_k_wider_than_a_tile_and_bad_k():
    b, d, f, _ = SHAPES[0]
    x, W, bias = inputs(b, d, f, seed=11)
    for k in (33, 64, min(f, MAX_K)):  # wider than a tile (block_n=32); on the CPU k=F keeps every feature
        vals, idx = fused_topk(x, W, bias, k, **SMALL_TILES)
        assert_topk_up_to_ties(vals, idx, dense_reference(x, W, bias), k, 1e-5)
    for bad in (0, f + 1):
        with pytest.raises(Exception, match=f"k={bad}"):
            fused_topk(x, W, bias, bad)
    x, W, bias = inputs(3, 4, 300, seed=12)
    with pytest.raises(Exception, match=f"k={MAX_K + 1}.*{MAX_K}"):  # its running top-k would not fit in registers
        fused_topk(x, W, bias, MAX_K + 1)
    assert fusable_k([TopK(MAX_K + 1)]) is None, "encode keeps the unfused path for such a k"


def test_encode_fused_equals_unfused(monkeypatch):
    """encode with SAE_SELECT=fused gives the codes and gradients of the unfused path, for the
    trainer's TopK selectors: main k, Multi-TopK's 4k, AuxK among some (dead) features."""
    monkeypatch.setenv("SAE_KERNELS", "triton")
    b, d, f, _ = ENCODE_SHAPES[0]
    gen = torch.Generator().manual_seed(21)
    params = [torch.randn(b, d, generator=gen), torch.randn(f, d, generator=gen) / d**0.5,
              torch.randn(f, generator=gen) * 0.1, torch.randn(f, d, generator=gen), torch.randn(d, generator=gen)]
    dead = torch.randperm(f, generator=gen)[: f // 3].to(DEVICE)
    import saes.kernels.fused_select as fs

    calls = []
    real = fs.fused_topk
    monkeypatch.setattr(fs, "fused_topk", lambda *a, **kw: calls.append(a[3]) or real(*a, **kw))
    results = {}
    for mode in ("dense", "fused"):
        monkeypatch.setenv("SAE_SELECT", mode)
        x, We, be, Wd, bd = [p.to(DEVICE).requires_grad_(True) for p in params]
        codes = encode(x, We.t(), be, [TopK(5), TopK(20), TopK(7, features=dead), TopK(3, features=dead[:0])])
        loss = sum(sparse_decode(c, Wd, bd).pow(2).sum() / (i + 1) for i, c in enumerate(codes))
        grads = torch.autograd.grad(loss, [x, We, be, Wd, bd])
        results[mode] = codes, grads
    assert calls == [20], "one fused pass, as wide as the widest TopK over all features, only when asked for"
    encode(params[0].to(DEVICE), params[1].to(DEVICE).t(), params[2].to(DEVICE), [TopK(5), BatchTopK(3)])
    assert calls == [20], "another rule needs the dense pre-activations: no fused pass"
    (codes_d, grads_d), (codes_f, grads_f) = results["dense"], results["fused"]
    for cd, cf in zip(codes_d, codes_f):
        assert cf.k == cd.k and torch.equal(cf.rows, cd.rows) and torch.equal(cf.offsets, cd.offsets)
        dense_d = cd.to_dense().detach()
        dense_f = cf.to_dense().detach()
        assert torch.allclose(dense_f, dense_d, atol=1e-5), "different places or values"
        assert bool((cf.vals >= 0).all()), "values are relu(pre), as on the unfused path"
    assert codes_f[3].nnz == 0
    for gf, gd in zip(grads_f, grads_d):
        assert torch.allclose(gf, gd, atol=1e-4, rtol=1e-4)


def test_encode_fused_bf16_selection(monkeypatch):
    """matmul_dtype=bf16: places a top-k of the bf16 pre-activations (up to ties at bf16
    resolution; the unfused path rounds its bf16 addmm its own way), values relu of the exact
    fp32 pre-activations there, recomputed as on the unfused path."""
    monkeypatch.setenv("SAE_KERNELS", "triton")
    monkeypatch.setenv("SAE_SELECT", "fused")
    b, d, f, k = ENCODE_SHAPES[1]
    x, W, bias = inputs(b, d, f, seed=8)
    (codes,) = encode(x, W, bias, [TopK(k)], matmul_dtype=torch.bfloat16)
    idx = codes.cols.view(b, k)
    pre_bf16 = dense_reference(x.bfloat16(), W.bfloat16(), bias.bfloat16())
    assert_topk_up_to_ties(pre_bf16.gather(1, idx), idx, pre_bf16, k, 2**-7)
    exact = dense_reference(x, W, bias).gather(1, idx).relu()
    assert torch.allclose(codes.vals.detach().view(b, k).double(), exact, atol=1e-5)
