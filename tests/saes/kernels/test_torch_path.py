"""The torch path against dense references on fresh random inputs of odd shapes."""

from __future__ import annotations

import pytest
import torch

from saes.kernels import (
    BatchTopK,
    FeatureChoice,
    SparseCodes,
    Threshold,
    TopK,
    backend,
    decode_forward,
    decoder_weight_grad,
    encode,
    encoder_input_grad,
    encoder_weight_grad,
    feature_index,
    grad_at_active,
    select,
    sparse_decode,
)
from saes.kernels import torch_ops
from workbench.errors import WorkbenchError

B, D, F = 37, 11, 53


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def selectors(f: int, gen: torch.Generator, dtype=torch.float32):
    return [
        TopK(5),
        TopK(4, features=torch.randperm(f, generator=gen)[:9]),
        BatchTopK(3),
        FeatureChoice(torch.randint(0, 6, (f,), generator=gen)),
        Threshold(torch.rand(f, generator=gen, dtype=dtype) * 0.5),
    ]


def dense_mask(pre: torch.Tensor, sel) -> torch.Tensor:
    """The places each selector picks, computed the plain dense way."""
    b, f = pre.shape
    mask = torch.zeros(b, f, dtype=torch.bool)
    if isinstance(sel, TopK):
        feats = torch.arange(f) if sel.features is None else sel.features
        sub = pre[:, feats]
        idx = sub.topk(min(sel.k, feats.numel()), dim=1).indices
        mask[torch.arange(b)[:, None], feats[idx]] = True
    elif isinstance(sel, BatchTopK):
        mask.view(-1)[pre.reshape(-1).topk(sel.k * b).indices] = True
    elif isinstance(sel, FeatureChoice):
        for j in range(f):
            c = int(sel.capacity[j])
            if c:
                mask[pre[:, j].topk(min(c, b)).indices, j] = True
    else:
        mask = pre > sel.theta
    return mask


def random_codes(b: int, f: int, gen: torch.Generator, fixed_k: int | None, dtype=torch.float32) -> SparseCodes:
    if fixed_k is not None:
        idx = torch.stack([torch.randperm(f, generator=gen)[:fixed_k] for _ in range(b)])
        return SparseCodes.from_topk(torch.randn(b, fixed_k, generator=gen, dtype=dtype), idx, f)
    mask = torch.rand(b, f, generator=gen) < 0.15
    mask[3] = False  # a token with no active features at all
    rows, cols = mask.nonzero().unbind(1)
    return SparseCodes.from_rows_cols(torch.randn(rows.numel(), generator=gen, dtype=dtype), rows, cols, b, f)


@pytest.mark.parametrize("fixed_k", [7, None])
def test_building_blocks_match_dense(fixed_k):
    gen = torch.Generator().manual_seed(1)
    codes = random_codes(B, F, gen, fixed_k)
    dense = codes.to_dense()
    W = torch.randn(F, D, generator=gen)
    bias = torch.randn(D, generator=gen)
    go = torch.randn(B, D, generator=gen)
    x = torch.randn(B, D, generator=gen)

    out = decode_forward(codes.vals, codes.cols, codes.offsets, codes.k, W, bias)
    assert rel(out, dense @ W + bias) < 1e-6
    assert rel(encoder_input_grad(codes.vals, codes.cols, codes.offsets, codes.k, W), dense @ W) < 1e-6

    gv = grad_at_active(go, W, codes.rows, codes.cols)
    assert rel(gv, (go @ W.t())[codes.rows, codes.cols]) < 1e-6

    for by_feature in (None, codes.by_feature()):
        dW = decoder_weight_grad(codes.vals, codes.rows, codes.cols, go, F, by_feature)
        assert rel(dW, dense.t() @ go) < 1e-6
        dWe = encoder_weight_grad(x, codes.vals, codes.rows, codes.cols, F, by_feature)
        assert rel(dWe, (x.t() @ dense).t()) < 1e-6
    assert rel(torch_ops.bias_grad(codes.vals, codes.cols, F), dense.sum(0)) < 1e-6


def test_bf16_building_blocks_within_1e2():
    gen = torch.Generator().manual_seed(2)
    codes = random_codes(B, F, gen, 6)
    W = torch.randn(F, D, generator=gen)
    go = torch.randn(B, D, generator=gen)
    dense = codes.to_dense()
    vb, Wb, gb = codes.vals.bfloat16(), W.bfloat16(), go.bfloat16()
    ref_dec = dense.bfloat16().float() @ Wb.float()
    assert rel(decode_forward(vb, codes.cols, codes.offsets, codes.k, Wb, None), ref_dec) < 1e-2
    assert rel(grad_at_active(gb, Wb, codes.rows, codes.cols), (gb.float() @ Wb.float().t())[codes.rows, codes.cols]) < 1e-2
    dW = decoder_weight_grad(vb, codes.rows, codes.cols, gb, F)
    assert rel(dW, dense.bfloat16().float().t() @ gb.float()) < 1e-2


def test_feature_index_groups_entries_by_feature():
    cols = torch.tensor([4, 1, 4, 0, 1, 4])
    order, fo = feature_index(cols, 6)
    assert fo.tolist() == [0, 1, 3, 3, 3, 6, 6]
    assert cols[order].tolist() == [0, 1, 1, 4, 4, 4]
    assert order.tolist() == [3, 1, 4, 0, 2, 5]  # stable: token order kept inside a feature


@pytest.mark.parametrize("sel_i", range(5))
def test_selectors_pick_the_dense_rule(sel_i):
    gen = torch.Generator().manual_seed(3)
    pre = torch.randn(B, F, generator=gen)  # continuous: no ties
    sel = selectors(F, gen)[sel_i]
    s = select(pre, sel)
    if s.k is not None:
        rows = torch.arange(B).repeat_interleave(s.k)
        cols = s.cols.reshape(-1)
    else:
        rows, cols = s.rows, s.cols
        assert bool((rows[1:] >= rows[:-1]).all()), "rows must be ascending"
    got = torch.zeros(B, F, dtype=torch.bool)
    got[rows, cols] = True
    assert got.sum() == rows.numel(), "a place was picked twice"
    assert torch.equal(got, dense_mask(pre, sel))
    assert torch.equal(s.pre.reshape(-1), pre[rows, cols])


def test_batch_topk_falls_back_when_one_token_holds_most_of_the_budget():
    gen = torch.Generator().manual_seed(4)
    pre = torch.randn(B, F, generator=gen)
    pre[5] += 100.0  # token 5 alone exceeds every other: it takes min(F, k*B) entries, more than 4k
    s = select(pre, BatchTopK(2))
    got = torch.zeros(B, F, dtype=torch.bool)
    got[s.rows, s.cols] = True
    assert torch.equal(got, dense_mask(pre, BatchTopK(2)))
    assert int((s.rows == 5).sum()) == F


def _dense_reference(x, W_t, b, Wd, bd, masks):
    pre = x @ W_t + b
    zs = [torch.where(m, pre.relu(), torch.zeros_like(pre)) for m in masks]
    return [z @ Wd + bd for z in zs]


@pytest.mark.parametrize("sel_i", range(5))
@pytest.mark.parametrize("enc_layout", ["fd_param", "df_param"])
def test_encode_decode_forward_and_backward_match_dense_autograd(sel_i, enc_layout):
    gen = torch.Generator().manual_seed(10 + sel_i)
    dt = torch.float64
    x = torch.randn(B, D, generator=gen, dtype=dt, requires_grad=True)
    W = torch.randn(F, D, generator=gen, dtype=dt) if enc_layout == "fd_param" else torch.randn(D, F, generator=gen, dtype=dt)
    W.requires_grad_(True)
    b = torch.randn(F, generator=gen, dtype=dt).requires_grad_(True)
    Wd = torch.randn(F, D, generator=gen, dtype=dt, requires_grad=True)
    bd = torch.randn(D, generator=gen, dtype=dt, requires_grad=True)
    sel = selectors(F, gen, dt)[sel_i]
    W_enc = (lambda: W.t()) if enc_layout == "fd_param" else (lambda: W)
    target = torch.randn(B, D, generator=gen, dtype=dt)

    (codes,) = encode(x, W_enc(), b, [sel])
    out = sparse_decode(codes, Wd, bd)
    loss = ((out - target) ** 2).sum() + codes.vals.sum()  # a loss on the codes themselves too
    grads = torch.autograd.grad(loss, [x, W, b, Wd, bd])

    mask = codes.to_dense().detach() != 0
    (ref_out,) = _dense_reference(x, W_enc(), b, Wd, bd, [mask])
    pre = x @ W_enc() + b
    ref_codes_sum = torch.where(mask, pre.relu(), 0).sum()
    ref_loss = ((ref_out - target) ** 2).sum() + ref_codes_sum
    ref_grads = torch.autograd.grad(ref_loss, [x, W, b, Wd, bd])
    assert rel(out, ref_out) < 1e-12
    for name, g, r in zip(["x", "W_enc", "b_enc", "W_dec", "b_dec"], grads, ref_grads):
        assert g.shape == r.shape, name
        assert rel(g, r) < 1e-10, name


def test_several_selectors_share_one_matmul_and_sum_their_gradients():
    gen = torch.Generator().manual_seed(20)
    dt = torch.float64
    x = torch.randn(B, D, generator=gen, dtype=dt, requires_grad=True)
    W = torch.randn(F, D, generator=gen, dtype=dt, requires_grad=True)
    b = torch.randn(F, generator=gen, dtype=dt, requires_grad=True)
    Wd = torch.randn(F, D, generator=gen, dtype=dt, requires_grad=True)
    dead = torch.randperm(F, generator=gen)[:13]
    sels = [TopK(4), TopK(16), TopK(6, features=dead), FeatureChoice(torch.randint(0, 5, (F,), generator=gen))]
    codes = encode(x, W.t(), b, sels)
    assert [c.k for c in codes] == [4, 16, 6, None]
    outs = [sparse_decode(c, Wd) for c in codes]
    loss = outs[0].pow(2).sum() + 0.125 * outs[1].pow(2).sum() + outs[2].sin().sum() + outs[3].cos().sum()
    grads = torch.autograd.grad(loss, [x, W, b, Wd])
    masks = [c.to_dense().detach() != 0 for c in codes]
    for c, sel in zip(codes, sels):  # each selector's places are its dense rule's, on the shared matmul
        assert torch.equal(c.to_dense().detach() != 0, dense_mask((x @ W.t() + b).detach(), sel) & (x @ W.t() + b > 0))
    r = _dense_reference(x, W.t(), b, Wd, torch.zeros(D, dtype=dt), masks)
    ref = r[0].pow(2).sum() + 0.125 * r[1].pow(2).sum() + r[2].sin().sum() + r[3].cos().sum()
    for g, rg in zip(grads, torch.autograd.grad(ref, [x, W, b, Wd])):
        assert rel(g, rg) < 1e-10


@pytest.mark.parametrize("sel_i", range(5))
def test_gradcheck_encode_and_decode(sel_i):
    gen = torch.Generator().manual_seed(30 + sel_i)
    b_, d_, f_ = 6, 4, 9
    dt = torch.float64
    x = torch.randn(b_, d_, generator=gen, dtype=dt, requires_grad=True)
    W = torch.randn(f_, d_, generator=gen, dtype=dt, requires_grad=True)
    b = torch.randn(f_, generator=gen, dtype=dt, requires_grad=True)
    Wd = torch.randn(f_, d_, generator=gen, dtype=dt, requires_grad=True)
    bd = torch.randn(d_, generator=gen, dtype=dt, requires_grad=True)
    sel = [TopK(3), TopK(2, features=torch.tensor([0, 4, 8, 2])), BatchTopK(2),
           FeatureChoice(torch.tensor([0, 1, 2, 3, 1, 6, 2, 2, 1])), Threshold(torch.full((f_,), 0.2, dtype=dt))][sel_i]

    def f(x, W, b, Wd, bd):
        (c,) = encode(x, W.t(), b, [sel])
        return sparse_decode(c, Wd, bd), c.vals

    assert torch.autograd.gradcheck(f, (x, W, b, Wd, bd))


def test_codes_helpers():
    vals = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    idx = torch.tensor([[4, 0], [2, 3]])
    c = SparseCodes.from_topk(vals, idx, 5)
    assert c.k == 2 and c.batch_size == 2 and c.nnz == 4
    assert c.rows.tolist() == [0, 0, 1, 1] and c.offsets.tolist() == [0, 2, 4]
    assert c.to_dense().tolist() == [[2.0, 0, 0, 0, 1.0], [0, 0, 3.0, 0.0, 0]]
    assert c.l0().tolist() == [2, 2]
    v = SparseCodes.from_rows_cols(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 2, 2]), torch.tensor([1, 0, 4]), 4, 5)
    assert v.k is None and v.offsets.tolist() == [0, 1, 1, 3, 3] and v.l0().tolist() == [1, 0, 2, 0]


def test_bad_input_names_the_values(monkeypatch):
    x, W, b = torch.randn(4, 3), torch.randn(3, 8), torch.zeros(8)
    with pytest.raises(WorkbenchError, match="k=9 .*8"):
        encode(x, W, b, [TopK(9)])
    with pytest.raises(WorkbenchError, match=r"x \(4, 3\).*W_enc \(5, 8\)"):
        encode(x, torch.randn(5, 8), b, [TopK(2)])
    with pytest.raises(WorkbenchError, match=r"capacity has shape \(7,\); expected \(8,\)"):
        encode(x, W, b, [FeatureChoice(torch.ones(7, dtype=torch.long))])
    with pytest.raises(WorkbenchError, match="unknown selector 'str'.*TopK"):
        encode(x, W, b, ["topk"])
    (c,) = encode(x, W, b, [TopK(2)])
    with pytest.raises(WorkbenchError, match=r"W_dec has shape \(7, 3\).*8"):
        sparse_decode(c, torch.randn(7, 3))
    monkeypatch.setenv("SAE_KERNELS", "cuda")
    with pytest.raises(WorkbenchError, match="'cuda'.*auto, torch, triton"):
        backend(x)


def test_backend_dispatch(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.delenv("SAE_KERNELS", raising=False)
    assert backend(x) == "torch"  # CPU tensors never go to Triton unless forced
    monkeypatch.setenv("SAE_KERNELS", "torch")
    assert backend(x) == "torch"
    monkeypatch.setenv("SAE_KERNELS", "triton")
    assert backend(x) == "triton"


def _largest_allocations(fn) -> list[int]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sorted((e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0), reverse=True)


@pytest.mark.parametrize("sel", [TopK(4), BatchTopK(4), FeatureChoice(torch.full((4099,), 3))], ids=repr)
def test_backward_allocates_nothing_of_dense_batch_by_features_size(sel):
    """Every allocation in the backward is under half a dense fp32 [B, F] gradient (counted by the
    profiler's allocator hooks, so allocations inside library kernels count too); the same
    detector does flag the dense autograd backward."""
    b, d, f = 64, 8, 4099
    limit = b * f * 4 // 2
    gen = torch.Generator().manual_seed(50)
    x = torch.randn(b, d, generator=gen, requires_grad=True)
    We = torch.randn(f, d, generator=gen, requires_grad=True)
    be = torch.zeros(f, requires_grad=True)
    Wd = torch.randn(f, d, generator=gen, requires_grad=True)
    bd = torch.zeros(d, requires_grad=True)
    (c,) = encode(x, We.t(), be, [sel])
    loss = sparse_decode(c, Wd, bd).pow(2).sum()
    assert max(_largest_allocations(loss.backward)) < limit
    assert We.grad is not None and Wd.grad is not None and x.grad is not None

    mask = c.to_dense().detach() != 0
    pre = x @ We.t() + be
    dense_loss = (torch.where(mask, pre.relu(), 0) @ Wd + bd).pow(2).sum()
    assert max(_largest_allocations(dense_loss.backward)) >= limit  # the detector is not blind


def test_bf16_matmul_chooses_places_and_keeps_exact_values():
    gen = torch.Generator().manual_seed(60)
    b, d, f, k = 41, 33, 97, 6
    x = torch.randn(b, d, generator=gen, requires_grad=True)
    We = torch.randn(f, d, generator=gen, requires_grad=True)
    be = (torch.randn(f, generator=gen) * 0.1).requires_grad_(True)
    Wd = torch.randn(f, d, generator=gen, requires_grad=True)
    (c,) = encode(x, We.t(), be, [TopK(k)], matmul_dtype=torch.bfloat16)
    assert c.vals.dtype == torch.float32
    pre = x @ We.t() + be
    # values are the fp32 pre-activations at the chosen places, not their bf16 roundings
    assert rel(c.vals, pre[c.rows, c.cols].relu()) < 1e-6
    # the chosen places are (nearly) the fp32 top-k: all but boundary near-ties agree
    ref = torch.zeros(b, f, dtype=torch.bool)
    ref[torch.arange(b)[:, None], pre.topk(k, dim=1).indices] = True
    agree = ref[c.rows, c.cols].float().mean()
    assert agree > 0.9
    # gradients are those of the dense reference with the same places
    loss = sparse_decode(c, Wd).pow(2).sum()
    grads = torch.autograd.grad(loss, [x, We, be, Wd])
    mask = c.to_dense().detach() != 0
    ref_loss = (torch.where(mask, pre.relu(), 0) @ Wd).pow(2).sum()
    for g, r in zip(grads, torch.autograd.grad(ref_loss, [x, We, be, Wd])):
        assert rel(g, r) < 1e-5


@pytest.mark.parametrize(
    "sel",
    [TopK(8, features=torch.tensor([], dtype=torch.long)), Threshold(torch.full((F,), 1e9)),
     FeatureChoice(torch.zeros(F, dtype=torch.long))],
    ids=["auxk-no-dead-features", "threshold-nothing-fires", "zero-capacity"],
)
def test_empty_selections_give_zero_codes_and_zero_gradients(sel):
    """AuxK with no dead feature (the healthy case) must not break the step."""
    gen = torch.Generator().manual_seed(70)
    x = torch.randn(B, D, generator=gen, requires_grad=True)
    W = torch.randn(F, D, generator=gen, requires_grad=True)
    b = torch.zeros(F, requires_grad=True)
    Wd = torch.randn(F, D, generator=gen, requires_grad=True)
    main, aux = encode(x, W.t(), b, [TopK(3), sel])
    assert aux.nnz == 0 and aux.batch_size == B and aux.l0().sum() == 0
    out = sparse_decode(aux, Wd)
    assert out.shape == (B, D) and not out.any()
    loss = sparse_decode(main, Wd).pow(2).sum() + out.pow(2).sum() + aux.vals.sum()
    loss.backward()
    assert torch.isfinite(W.grad).all() and W.grad.any()
