"""The dashboard pass against brute force on a small real cache (all activations in memory)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.evals.inspect_support import tiny_for


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_for(tmp_path_factory)


@pytest.fixture(scope="module")
def lens_model(tiny):
    """The cache's model with a final-norm gain far from ones and partly negative, as trained
    models have (a freshly built Llama's is all ones, which would hide a lens that ignores it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench.models import from_hf_model

    hf = AutoModelForCausalLM.from_pretrained(tiny["model"])
    with torch.no_grad():
        hf.model.norm.weight.copy_(torch.randn(32, generator=torch.Generator().manual_seed(7)) * 1.5 + 0.5)
    hf.eval()
    return from_hf_model(hf, AutoTokenizer.from_pretrained(tiny["model"]), model_id=str(tiny["model"]))


@pytest.fixture(scope="module")
def built(tiny, lens_model, tmp_path_factory):
    from evals.features import FeatureConfig, FeatureData, build_features

    cfg = FeatureConfig(checkpoint_every=2, corr_features=64)
    out = build_features(tiny["sae"], tiny["cache"], tmp_path_factory.mktemp("feat"), cfg, progress=False,
                         model=lens_model)
    return FeatureData(out), cfg


@pytest.fixture(scope="module")
def dense(tiny):
    """Every row's activations, ids and SAE codes, computed the plain way."""
    from harvesting import CacheReader
    from saes import load_sae

    r = CacheReader(tiny["cache"])
    shards = [r.load_shard(i) for i in range(len(r.shards))]
    cat = {k: torch.cat([s[k] for s in shards]) for k in shards[0]}
    sae = load_sae(tiny["sae"])
    with torch.no_grad():
        z = sae.encode_dense(cat["blocks.1.hook_resid_post"].float())
    return cat, z, sae


def test_topk_equals_brute_force(built, dense):
    data, cfg = built
    ids, z, _ = dense
    assert len(ids["token_ids"]) > 2000 and data.meta["tokens"] == z.shape[0]
    t = data.tensors
    fired = 0
    for f in range(z.shape[1]):
        col = z[:, f]
        nz = int((col > 0).sum())
        assert int(t["nnz"][f]) == nz
        n = min(nz, cfg.top_k)
        if n == 0:
            assert torch.isinf(t["top_val"][f]).all()
            continue
        fired += 1
        # ties (equal activations on repeated prefixes) go to the earlier row
        r = torch.tensor(sorted(range(col.numel()), key=lambda i: (-float(col[i]), i))[:n])
        v = col[r]
        assert torch.equal(t["top_val"][f, :n], v)
        assert torch.equal(t["top_row"][f, :n], r)
        assert torch.isinf(t["top_val"][f, n:]).all()
        for j in range(n):  # the window: same context only, the feature's own activations
            row = int(r[j])
            for d in range(-cfg.context, cfg.context + 1):
                q = row + d
                ok = 0 <= q < z.shape[0] and ids["context_ids"][q] == ids["context_ids"][row]
                assert int(t["top_tok"][f, j, d + cfg.context]) == (int(ids["token_ids"][q]) if ok else -1)
                assert float(t["top_act"][f, j, d + cfg.context]) == (float(z[q, f]) if ok else 0.0)
    assert fired > z.shape[1] // 2
    assert torch.allclose(t["density"], (z > 0).double().mean(0))
    assert torch.allclose(t["max"], z.max(0).values)


def test_interval_samples_fall_in_their_intervals(built, dense):
    data, cfg = built
    _, z, _ = dense
    t = data.tensors
    for f in range(z.shape[1]):
        col = z[:, f]
        acts = col[col > 0]
        edges = t["int_edges"][f]
        counts = t["int_counts"][f]
        assert int(counts.sum()) == acts.numel() == int(t["hist"][f].sum())
        if acts.numel() == 0:
            continue
        top = float(acts.max())
        assert top <= float(edges[-1]) * (1 + 1e-6)
        assert float(edges[-1]) <= top * (1 + 2 * cfg.intervals / cfg.fine_bins) + 1e-6
        # shares, counted by hand: interval i holds every value strictly between its edges, and
        # may hold a value within float error of either edge (those may go either way)
        tol = 1e-5 * top
        for i in range(cfg.intervals):
            lo, hi = float(edges[i]), float(edges[i + 1])
            inside = sum(1 for v in acts.tolist() if lo + tol < v < hi - tol)
            at_edge = sum(1 for v in acts.tolist() if abs(v - lo) <= tol or abs(v - hi) <= tol)
            assert inside <= int(counts[i]) <= inside + at_edge, (f, i, inside, at_edge, int(counts[i]))
        for i in range(cfg.intervals):
            rows = t["int_rows"][f, i]
            have = rows[rows >= 0]
            assert have.numel() == min(int(counts[i]), cfg.samples)
            assert have.unique().numel() == have.numel()
            vals = t["int_vals"][f, i][rows >= 0]
            assert torch.equal(vals, col[have])
            lo, hi = float(edges[i]), float(edges[i + 1])
            assert ((vals >= lo - 1e-6 * top) & (vals <= hi + 1e-6 * top)).all(), (f, i, vals, lo, hi)


def test_logit_lens_is_the_models_readout(built, tiny, lens_model):
    """Against the model's own modules: the logits it writes for a residual along W_dec[f]
    (final norm, then lm_head), less those for an empty residual; equal up to one positive factor."""
    from saes import load_sae

    data, cfg = built
    hf = lens_model.bridge.original_model
    w_dec = load_sae(tiny["sae"]).W_dec.detach()
    with torch.no_grad():
        ref = hf.lm_head(hf.model.norm(w_dec)) - hf.lm_head(hf.model.norm(torch.zeros_like(w_dec)))
    for f in (0, 7, 50):
        v, i = torch.topk(ref[f], cfg.logit_tokens)
        assert torch.equal(data.tensors["logit_top_ids"][f], i)
        ours = data.tensors["logit_top_vals"][f]
        scale = float((ours * v).sum() / (ours * ours).sum())
        assert scale > 0
        torch.testing.assert_close(ours * scale, v, rtol=1e-4, atol=1e-6)
        v, i = torch.topk(-ref[f], cfg.logit_tokens)
        assert torch.equal(data.tensors["logit_bot_ids"][f], i)
        assert int(data.tensors["logit_hist"][f].sum()) == hf.config.vocab_size == ref.shape[1]
    assert data.meta["logit_lens"] == "final norm (rmsnorm) gain folded into W_U"


def test_correlations_and_neighbours_equal_brute_force(built, dense):
    data, cfg = built
    _, z, sae = dense
    tracked = data.cooccurrence()["tracked"]
    assert tracked.numel() == 64
    zt = z[:, tracked].double()
    corr = torch.corrcoef(zt.t())
    corr.fill_diagonal_(-math.inf)
    corr[torch.isnan(corr)] = -math.inf
    for j, f in enumerate(tracked.tolist()):
        if torch.isinf(corr[j]).all():
            continue
        v, i = torch.topk(corr[j], 3)
        assert data.tensors["corr_ids"][f, 0] == tracked[i[0]]
        assert torch.allclose(data.tensors["corr_vals"][f, :3].double(), v, atol=1e-4)
    unit = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
    cos = unit @ unit.t()
    cos.fill_diagonal_(-2)
    v, i = torch.topk(cos, cfg.neighbours, dim=1)
    assert torch.equal(data.tensors["near_ids"], i)
    # co-occurrence: chunks of chunk_tokens rows within each shard
    co = data.cooccurrence()
    assert int(co["cooc"].diagonal().max()) <= int(co["chunks"][0])


def test_killed_build_resumes_to_identical_result(tiny, built, lens_model, tmp_path):
    from evals.features import FeatureData, build_features

    _, cfg = built
    seen = []

    def kill(done: int) -> None:
        seen.append(done)
        if done == 4:
            raise KeyboardInterrupt

    out = tmp_path / "f"
    with pytest.raises(KeyboardInterrupt):
        build_features(tiny["sae"], tiny["cache"], out, cfg, progress=False, on_checkpoint=kill, model=lens_model)
    assert (out / "pass_checkpoint.safetensors").is_file() and not (out / "features.json").exists()
    build_features(tiny["sae"], tiny["cache"], out, cfg, progress=False, on_checkpoint=seen.append, model=lens_model)
    assert seen[0] == 2 and seen[1] == 4 and 4 not in seen[2:] and seen[2] == 6  # resumed after shard 4
    a, b = FeatureData(out).tensors, built[0].tensors
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True, msg=k)
    assert not (out / "pass_checkpoint.safetensors").exists()


def test_notebook_objects_render_themselves(tiny, built):
    import html as html_lib

    from evals.features import ComparisonTable, FeatureCard, SAESummary, describe_sae, features
    from saes import load_sae

    fs = features(tiny["sae"], cache=tiny["cache"], progress=False)
    card = fs[0]
    assert isinstance(card, FeatureCard) and card.feature == 0
    page = card._repr_html_()
    assert "Top activations" in page and "&lt;script&gt;" in page and "<script>document" not in page
    assert "[[" in card.contexts(1)[0] and "FeatureCard(feature=0" in repr(card)
    assert 0 in fs.search("<script>", by="act")
    summary = fs.summary()
    assert isinstance(summary, SAESummary)
    facts = summary.facts()
    assert facts["features"] == 96 and facts["mean L0"] == pytest.approx(8.0, abs=1e-6)  # TopK k=8
    assert "log10 feature density" in summary._repr_html_()
    table = ComparisonTable([fs, fs], names=["a", "b<i>"])._repr_html_()
    assert table.count("<tr>") == 3 and html_lib.escape("b<i>") in table
    assert describe_sae(load_sae(tiny["sae"])) == (
        f"TopKSAE(topk, blocks.1.hook_resid_post, d_in=32, width=96, k=8, model={tiny['model']})")
    with pytest.raises(Exception, match="feature 96 does not exist"):
        fs[96]
