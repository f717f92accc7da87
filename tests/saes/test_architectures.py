"""Every architecture against a plain dense reference: inference codes, training loss and gradients.

The references build the dense `[B, F]` codes and let autograd differentiate them; the SAEs go
through the sparse kernels and the hand-written backward passes. Float64 throughout, so the
comparisons are tight.
"""

from __future__ import annotations

import math

import pytest
import torch

from saes import SAEConfig, build_sae
from saes.base import StepContext
from saes.architectures.jumprelu import JumpReLUFn, StepFn, rectangle
from saes.losses import moment_sums, variance_from_sums
from saes.architectures.matching_pursuit import pursuit_choices
from workbench.errors import WorkbenchError

B, D, F, K = 24, 10, 40, 3
DT = torch.float64


def make(arch: str, seed: int = 0, **kw) -> torch.nn.Module:
    cfg = SAEConfig(architecture=arch, d_in=D, num_features=F, k=K, **kw)
    sae = build_sae(cfg, dtype=DT, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # move away from the symmetric init so every term is exercised
        sae.enc_weight.add_(0.3 * torch.randn(F, D, generator=g, dtype=DT))
        sae.b_enc.copy_(0.2 * torch.randn(F, generator=g, dtype=DT))
        sae.b_dec.copy_(0.5 * torch.randn(D, generator=g, dtype=DT))
    return sae


def data(seed: int = 1, n: int = B) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=DT) * 2 + 0.5


def ctx_for(x: torch.Tensor, **kw) -> StepContext:
    denom = variance_from_sums(moment_sums(x)).to(x.dtype)
    return StepContext(denom=denom, n_tokens=x.shape[0], **kw)


def dense_pre(sae, x):
    return (x - sae.b_dec) @ sae.W_enc + sae.b_enc


def dense_decode(sae, z, bias=True):
    return z @ sae.W_dec + (sae.b_dec if bias else 0)


def mask_topk(pre, k):
    m = torch.zeros_like(pre, dtype=torch.bool)
    m.scatter_(1, pre.topk(k, dim=1).indices, True)
    return m


def mask_batch_topk(pre, k):
    m = torch.zeros(pre.numel(), dtype=torch.bool)
    m[pre.reshape(-1).topk(k * pre.shape[0]).indices] = True
    return m.view_as(pre)


def mask_feature_choice(pre, cap):
    m = torch.zeros_like(pre, dtype=torch.bool)
    for f in range(pre.shape[1]):
        c = int(cap[f])
        if c:
            m[pre[:, f].topk(c).indices, f] = True
    return m


def grads(sae, loss):
    params = [p for p in sae.parameters() if p.requires_grad]
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    return {n: g for (n, p), g in zip([(n, p) for n, p in sae.named_parameters() if p.requires_grad], gs)}


def assert_same_grads(g_sparse, g_dense, tol=1e-9):
    assert g_sparse.keys() == g_dense.keys()
    for name in g_sparse:
        a, b = g_sparse[name], g_dense[name]
        if b is None:
            assert a is None or float(a.abs().max()) == 0.0, name
            continue
        assert a is not None, name
        torch.testing.assert_close(a, b, atol=tol, rtol=1e-7, msg=lambda m: f"{name}: {m}")


def fvu_loss(x, x_hat, denom):
    return (x_hat - x).pow(2).sum() / denom


# ------------------------------------------------------------------------------------------ inference


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu", "batchtopk", "feature_choice", "mutual_choice"])
def test_inference_codes_match_dense_rule(arch):
    sae = make(arch)
    x = data()
    pre = dense_pre(sae, x).detach()
    if arch in ("batchtopk", "feature_choice", "mutual_choice"):
        with torch.no_grad():
            sae.threshold.copy_(torch.rand(F, generator=torch.Generator().manual_seed(3), dtype=DT) * 0.5)
        mask = pre > sae.threshold
    elif arch == "topk":
        mask = mask_topk(pre, K)
    elif arch == "relu":
        mask = pre > 0
    else:
        mask = pre > sae.threshold.detach()
    ref = pre.relu() * mask
    with torch.no_grad():
        got = sae.encode_dense(x)
        torch.testing.assert_close(got, ref)
        torch.testing.assert_close(sae(x), dense_decode(sae, ref))


def test_batch_rules_match_dense_references():
    x = data(n=32)
    bt = make("batchtopk")
    pre = dense_pre(bt, x).detach()
    with torch.no_grad():
        torch.testing.assert_close(bt.encode_batch(x).to_dense(), pre.relu() * mask_batch_topk(pre, K))
    fc = make("feature_choice")
    pre = dense_pre(fc, x).detach()
    cap = fc.capacities(32, None)
    assert int(cap.sum()) == K * 32 and int(cap.max()) - int(cap.min()) <= 1
    with torch.no_grad():
        torch.testing.assert_close(fc.encode_batch(x).to_dense(), pre.relu() * mask_feature_choice(pre, cap))


@pytest.mark.parametrize("exponent", [0.6, 1.0])
def test_feature_choice_zipf_capacities_match_dense_reference(exponent):
    """Zipf capacities spread widely (grouped top-k in the selector): still each feature's best tokens."""
    x = data(n=64)
    fc = make("feature_choice", capacity="zipf", zipf_exponent=exponent)
    usage = torch.rand(F, generator=torch.Generator().manual_seed(8))
    cap = fc.capacities(64, usage)
    assert int(cap.sum()) == K * 64 and int(cap.max()) > 4 * int(cap.min()) + 4
    assert int(cap[usage.argmax()]) == int(cap.max())  # the most used feature gets the most tokens
    pre = dense_pre(fc, x).detach()
    from saes.kernels import FeatureChoice, encode

    (codes,) = encode(x - fc.b_dec, fc.W_enc, fc.b_enc, [FeatureChoice(cap)])
    torch.testing.assert_close(codes.to_dense().detach(), pre.relu() * mask_feature_choice(pre, cap))


def dense_matching_pursuit(x, W_dec, b_dec, k):
    """The textbook pursuit: recompute every correlation from the residual at every step."""
    atoms = W_dec / W_dec.norm(dim=1, keepdim=True)
    r = x - b_dec
    z = torch.zeros(x.shape[0], W_dec.shape[0], dtype=x.dtype)
    for _ in range(k):
        corr = r @ atoms.t()
        c, j = corr.max(dim=1)
        c = c.clamp_min(0)
        z = z + torch.zeros_like(z).scatter(1, j[:, None], c[:, None])
        r = r - c[:, None] * atoms[j]
    return z / W_dec.norm(dim=1)  # coefficient along the unit atom -> code of the (scaled) row


@pytest.mark.parametrize("gram", [True, False])
def test_matching_pursuit_matches_textbook_pursuit(gram):
    sae = make("matching_pursuit")
    with torch.no_grad():  # non-unit rows: the saved (folded) SAE must still pursue correctly
        sae.W_dec.mul_(torch.rand(F, 1, generator=torch.Generator().manual_seed(4), dtype=DT) + 0.5)
    x = data()
    ref = dense_matching_pursuit(x, sae.W_dec.detach(), sae.b_dec.detach(), K)
    import saes.architectures.matching_pursuit as mp

    old = mp.GRAM_BYTES
    mp.GRAM_BYTES = (1 << 40) if gram else 0
    try:
        with torch.no_grad():
            got = sae.encode_dense(x)
    finally:
        mp.GRAM_BYTES = old
    torch.testing.assert_close(got, ref)
    # The pursuit reduces the residual at every step: the reconstruction beats b_dec alone.
    with torch.no_grad():
        assert float((sae(x) - x).pow(2).sum()) < float((sae.b_dec - x).pow(2).sum())


def test_pursuit_choices_stop_when_nothing_correlates():
    atoms = torch.eye(4, dtype=DT)
    r0 = torch.tensor([[1.0, 0.0, 0.0, 0.0], [-1.0, -2.0, -1.0, -1.0]], dtype=DT)
    idx, live = pursuit_choices(r0, atoms, 3)
    assert idx[0, 0] == 0 and live[0].tolist() == [True, False, False]
    assert not live[1].any()


# ------------------------------------------------------------------------------------------ training


def test_topk_training_loss_and_grads_match_dense_reference_with_auxk_and_multitopk():
    sae = make("topk")
    x = data()
    dead = torch.tensor([1, 5, 7, 11, 20, 33])
    ctx = ctx_for(x, dead=dead, aux_loss="auxk", k_aux=4, aux_coef=0.25, multi_topk=True)
    out = sae.training_step(x, ctx)
    pre = dense_pre(sae, x)
    z = pre.relu() * mask_topk(pre.detach(), K)
    x_hat = dense_decode(sae, z)
    z4 = pre.relu() * mask_topk(pre.detach(), 4 * K)
    sub = pre[:, dead]
    zaux = torch.zeros_like(pre)
    zaux[:, dead] = sub.relu() * mask_topk(sub.detach(), 4)
    e = (x - x_hat).detach()
    aux = fvu_loss(e, dense_decode(sae, zaux, bias=False), ((e - e.mean(0)) ** 2).sum())
    ref = fvu_loss(x, x_hat, ctx.denom) + fvu_loss(x, dense_decode(sae, z4), ctx.denom) / 8 + 0.25 * aux
    torch.testing.assert_close(out.loss, ref)
    torch.testing.assert_close(out.terms["aux"], aux.detach())
    assert out.fired.tolist() == (z.detach() > 0).sum(0).tolist()
    assert_same_grads(grads(sae, out.loss), grads(sae, ref))


def test_auxk_target_does_not_count_b_dec_twice():
    """The aux features reconstruct x - x_hat; a perfect aux decode (no bias) makes the term 0."""
    from saes.kernels import SparseCodes
    from saes.losses import aux_reconstruction_loss

    W = torch.randn(6, 4, dtype=DT)
    codes = SparseCodes.from_topk(torch.rand(3, 2, dtype=DT), torch.tensor([[0, 1], [2, 3], [4, 5]]), 6)
    residual = codes.to_dense() @ W
    assert float(aux_reconstruction_loss(residual, codes, W, torch.tensor(1.0, dtype=DT))) < 1e-20


@pytest.mark.parametrize("arch", ["batchtopk", "mutual_choice", "feature_choice"])
def test_batch_level_training_matches_dense_reference(arch):
    sae = make(arch)
    x = data(n=32)
    usage = torch.rand(F, generator=torch.Generator().manual_seed(9)) * 0.1
    usage[:6] = 0  # dead / under-used features
    aux = "auxk" if arch == "batchtopk" else "zipf"
    ctx = ctx_for(x, dead=torch.arange(6), usage=usage, aux_loss=aux, k_aux=5, aux_coef=0.5, threshold_ema=0.5)
    out = sae.training_step(x, ctx)
    pre = dense_pre(sae, x)
    if arch == "feature_choice":
        cap = sae.capacities(32, usage, 0)
        z = pre.relu() * mask_feature_choice(pre.detach(), cap)
        entitlement = torch.full((F,), K / F, dtype=torch.float64)  # uniform capacities: k/F per token
    else:
        z = pre.relu() * mask_batch_topk(pre.detach(), K)
        from saes.losses import zipf_target_rates

        entitlement = zipf_target_rates(usage, K, 1.0).double()
    if aux == "auxk":
        under = torch.arange(6)
    else:
        under = torch.nonzero(usage.double() < 0.5 * entitlement).flatten()
    assert under.numel() > 0
    x_hat = dense_decode(sae, z)
    zaux = torch.zeros_like(pre)
    # per token, the k_aux best under-used features (AuxK's rule over them, for both architectures)
    kk = min(5, under.numel())
    zaux[:, under] = pre[:, under].relu() * mask_topk(pre[:, under].detach(), kk)
    e = (x - x_hat).detach()
    ref = fvu_loss(x, x_hat, ctx.denom) + 0.5 * fvu_loss(e, dense_decode(sae, zaux, False), ((e - e.mean(0)) ** 2).sum())
    torch.testing.assert_close(out.loss, ref)
    assert_same_grads(grads(sae, out.loss), grads(sae, ref))
    # The running threshold is the smallest kept value (first update takes it as is).
    kept = z.detach()
    if arch == "feature_choice":
        # the smallest positive kept value per feature: ReLU zeros are not firings
        fired = mask_feature_choice(pre.detach(), cap) & (kept > 0)
        expect = torch.where(fired, kept, torch.full_like(kept, math.inf)).min(0).values
    else:
        expect = kept[kept > 0].min().expand(F)
    torch.testing.assert_close(sae.threshold, expect)


def test_threshold_running_average():
    sae = make("batchtopk")
    ident = lambda t, op: t  # noqa: E731
    sae.update_threshold(torch.full((F,), 2.0, dtype=DT), 0.9, ident)
    sae.update_threshold(torch.full((F,), 1.0, dtype=DT), 0.9, ident)
    torch.testing.assert_close(sae.threshold, torch.full((F,), 0.9 * 2 + 0.1 * 1, dtype=DT))
    m = torch.full((F,), math.inf, dtype=DT)
    m[0] = 5.0
    sae.update_threshold(m, 0.9, ident)  # features that kept nothing keep their threshold
    assert float(sae.threshold[1]) == pytest.approx(1.9) and float(sae.threshold[0]) == pytest.approx(0.9 * 1.9 + 0.5)


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_relu_paths_match_dense_reference(path):
    sae = make("relu")
    x = data()
    ctx = ctx_for(x, sparsity_coef=3.0)
    out = sae.training_step(x, ctx, path=path)
    z = dense_pre(sae, x).relu()
    ref = fvu_loss(x, dense_decode(sae, z), ctx.denom) + 3.0 * (z * sae.W_dec.norm(dim=1)).sum() / ctx.denom
    torch.testing.assert_close(out.loss, ref)
    assert_same_grads(grads(sae, out.loss), grads(sae, ref))
    assert float(sae.last_density) == pytest.approx(float((z > 0).double().mean()))


def dense_jumprelu_reference(sae, x, denom, coef):
    """JumpReLU on the dense [B, F] pre-activations, with the STE written as autograd surrogates.

    z = pre * H(pre - theta) + (surrogate whose theta-derivative is -(theta/eps) K(.)), and
    L0 = H(pre - theta).sum() + (surrogate with derivative -(1/eps) K(.)): each surrogate is
    zero in value (x - x.detach()).
    """
    eps = sae.cfg.jumprelu_bandwidth
    theta = sae.threshold
    pre = dense_pre(sae, x)
    k = rectangle((pre.detach() - theta.detach()) / eps)
    h = (pre.detach() > theta.detach()).to(pre.dtype)
    z = pre * h + (-(theta.detach() / eps) * k * (theta - theta.detach()))
    l0 = h.sum() + (-(1 / eps) * k * (theta - theta.detach())).sum()
    return fvu_loss(x, dense_decode(sae, z), denom) + coef * l0 / denom


def test_jumprelu_training_matches_dense_ste_reference():
    sae = make("jumprelu", jumprelu_bandwidth=0.4)
    with torch.no_grad():  # thresholds above eps/2, some pre-activations inside the kernel band
        sae.log_threshold.copy_(torch.log(torch.rand(F, generator=torch.Generator().manual_seed(2), dtype=DT) + 0.3))
    x = data()
    ctx = ctx_for(x, sparsity_coef=0.7)
    out = sae.training_step(x, ctx)
    ref = dense_jumprelu_reference(sae, x, ctx.denom, 0.7)
    torch.testing.assert_close(out.loss, ref)
    g = grads(sae, out.loss)
    assert float(g["log_threshold"].abs().sum()) > 0, "no place fell inside the kernel: test is vacuous"
    assert_same_grads(g, grads(sae, ref))


def test_jumprelu_functions_gradients():
    """The STE backward against its closed form, and gradcheck where the derivative is the true one."""
    g = torch.Generator().manual_seed(0)
    v = torch.rand(50, generator=g, dtype=DT) * 2
    theta = torch.rand(50, generator=g, dtype=DT) + 0.2
    eps = 0.3
    v.requires_grad_(True)
    theta.requires_grad_(True)
    up = torch.randn(50, generator=g, dtype=DT)
    dv, dth = torch.autograd.grad(JumpReLUFn.apply(v, theta, eps), (v, theta), up)
    inside = ((v - theta) / eps > -0.5) & ((v - theta) / eps <= 0.5)
    torch.testing.assert_close(dv, up * (v > theta))
    torch.testing.assert_close(dth, -(theta / eps) * inside * up)
    (dth0,) = torch.autograd.grad(StepFn.apply(v, theta, eps), (theta,), up)
    torch.testing.assert_close(dth0, -(1 / eps) * inside * up)
    far = (v - theta).abs() > 1e-3
    vv = v.detach()[far].clone().requires_grad_(True)
    tt = theta.detach()[far]
    assert torch.autograd.gradcheck(lambda a: JumpReLUFn.apply(a, tt, eps), (vv,))


def test_matching_pursuit_training_matches_unrolled_dense_reference():
    sae = make("matching_pursuit")
    x = data()
    ctx = ctx_for(x)
    out = sae.training_step(x, ctx)
    # Dense reference: unrolled pursuit with full correlations each step, differentiated by autograd.
    atoms = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    r = x - sae.b_dec
    z = torch.zeros(B, F, dtype=DT)
    for _ in range(K):
        corr = r @ atoms.t()
        j = corr.detach().argmax(dim=1)
        c = corr.gather(1, j[:, None]).squeeze(1).relu()
        z = z + torch.zeros(B, F, dtype=DT).scatter(1, j[:, None], c[:, None])
        r = r - c[:, None] * atoms[j]
    z = z / sae.W_dec.norm(dim=1)
    ref = fvu_loss(x, dense_decode(sae, z), ctx.denom)
    torch.testing.assert_close(out.loss, ref)
    assert_same_grads(grads(sae, out.loss), grads(sae, ref))


def test_topk_training_loss_passes_gradcheck():
    """The sparse forward/backward of a TopK + AuxK loss is the derivative of that loss (float64).

    Finite differences of 1e-7 never flip a top-k choice at these random inputs, so the loss is
    smooth there and gradcheck's numerical Jacobian is the reference.
    """
    from saes.kernels import TopK, encode, sparse_decode
    from saes.losses import aux_reconstruction_loss

    sae = make("topk")
    x = data()
    denom = ctx_for(x).denom
    dead = torch.tensor([2, 3, 9])

    residual = torch.randn(B, D, generator=torch.Generator().manual_seed(7), dtype=DT)  # AuxK's target is a constant

    def loss_of(w_enc, b_enc, w_dec, b_dec):
        codes = encode(x - b_dec, w_enc.t(), b_enc, [TopK(K), TopK(2, features=dead)])
        x_hat = sparse_decode(codes[0], w_dec, b_dec)
        aux = aux_reconstruction_loss(residual, codes[1], w_dec, denom)
        return (x_hat - x).pow(2).sum() / denom + aux

    names = ["enc_weight", "b_enc", "W_dec", "b_dec"]
    inputs = tuple(getattr(sae, n).detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(loss_of, inputs, eps=1e-7, atol=1e-6, fast_mode=True)


# ------------------------------------------------------------------------------------------ checks


def test_config_errors_name_the_values():
    with pytest.raises(WorkbenchError, match=r"k=40 must be .* below the number of features \(40\)"):
        SAEConfig(architecture="topk", d_in=4, num_features=40, k=40)
    with pytest.raises(WorkbenchError, match=r"unknown architecture 'topkk'; valid choices: topk, batchtopk"):
        SAEConfig(architecture="topkk", d_in=4, num_features=40)
    sae = make("topk")
    with pytest.raises(WorkbenchError, match=r"takes inputs \[tokens, 10\].*got \(3, 7\)"):
        sae.encode(torch.randn(3, 7, dtype=DT))


def test_compiled_dense_path_matches_eager():
    """--compile compiles the ReLU SAE's dense phase; it must compute the same loss and gradients."""
    eager, compiled = make("relu"), make("relu")
    compiled.compile_dense_parts()
    x = data()
    ctx = ctx_for(x, sparsity_coef=2.0)
    a = eager.training_step(x, ctx, path="dense")
    b = compiled.training_step(x, ctx, path="dense")
    torch.testing.assert_close(a.loss, b.loss)
    assert torch.equal(a.fired, b.fired)
    assert_same_grads(grads(compiled, b.loss), grads(eager, a.loss))


def test_jumprelu_thresholds_start_at_l0_about_k():
    sae = make("jumprelu")
    x = torch.randn(2000, D, generator=torch.Generator().manual_seed(4), dtype=DT) * 3
    sae.init_from_sample(x)
    with torch.no_grad():
        l0 = sae.encode(x).nnz / x.shape[0]
    assert abs(l0 - K) < 0.2, l0
    assert float(sae.threshold.min()) >= sae.cfg.jumprelu_bandwidth / 2


def test_batch_topk_selection_with_saturated_tokens_matches_flat_topk():
    """Real activations have a few tokens that want far more than 4k features ("saturated"); the
    selector's candidate union must still return exactly the k*B largest entries of the batch."""
    from saes.kernels import BatchTopK as BT
    from saes.kernels import select

    g = torch.Generator().manual_seed(11)
    for n_big in (0, 3, 40):  # none, a few, most of the batch saturated (falls back to the flat top-k)
        pre = torch.randn(64, 200, generator=g, dtype=DT)
        pre[:n_big] += 6.0  # these tokens win many more than 4k entries
        s = select(pre, BT(4))
        got = torch.zeros(pre.numel(), dtype=torch.bool)
        got[s.rows * 200 + s.cols] = True
        ref = torch.zeros(pre.numel(), dtype=torch.bool)
        ref[pre.reshape(-1).topk(4 * 64).indices] = True
        assert torch.equal(got, ref), n_big
        assert torch.equal(s.pre, pre[s.rows, s.cols]) and bool((s.rows[1:] >= s.rows[:-1]).all())
        if n_big:
            # more than 4k = 16 entries each (up to the whole budget): the path under test was taken
            assert int((s.rows < n_big).sum()) >= min(4 * 64, 17 * n_big), "saturated tokens should win many entries"
