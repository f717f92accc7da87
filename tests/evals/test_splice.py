"""The SAE spliced into a real (tiny, random) model: scores at their fixed points, exactness, and the
stacked pass against a plain reference that runs each variant as its own forward pass."""

from __future__ import annotations

import pytest
import torch

from evals import cache_contexts, spliced_losses
from harvesting import CacheReader

from .conftest import HOOK, identity_sae, make_sae, zero_sae


@pytest.fixture(scope="module")
def contexts(tiny_cache):
    return list(cache_contexts(CacheReader(tiny_cache), HOOK, heldout_fraction=0.1, max_contexts=6, batch_contexts=3))


def test_contexts_are_the_harvested_ones(tiny_cache, contexts) -> None:
    """Rebuilt contexts hold BOS first, then exactly the stored token ids at their stored positions."""
    r = CacheReader(tiny_cache)
    rows = [r.load_shard(i, []) for i in range(len(r.shards))]
    ctx_ids = torch.cat([s["context_ids"] for s in rows])
    tok = torch.cat([s["token_ids"] for s in rows])
    pos = torch.cat([s["positions"] for s in rows])
    cut = r.heldout_start(0.1)  # the held-out split starts at a document boundary, maybe inside a context
    first = int(ctx_ids[cut]) + int(pos[cut] > len(r.manifest["tokenizer"]["prefix_ids"]))  # first whole one
    bos = r.manifest["tokenizer"]["prefix_ids"][0]
    flat = [(t, k) for cb in contexts for t, k in zip(cb.tokens, cb.keep)]
    assert len(flat) == 6 and contexts[0].tokens.shape == (3, 32)
    for i, (t, k) in enumerate(flat):
        sel = ctx_ids == first + i
        assert t[0] == bos and not k[0]
        assert torch.equal(t[pos[sel].long()], tok[sel].long()) and int(k.sum()) == int(sel.sum())


def _reference(lm, sae, tokens, keep, mean):
    """Each variant as its own forward pass, through the model's own hook API, CE and KL by the textbook."""
    def run(replace):
        def hook(act, hook=None):
            out = act.clone()
            if replace is not None:
                out[keep] = replace(act[keep])
            return out
        with lm.bridge.hooks(fwd_hooks=[(HOOK, hook)]):
            return torch.log_softmax(lm.bridge(tokens).float(), -1)

    with torch.no_grad():
        lps = {"clean": run(None), "sae": run(lambda x: sae(x)), "zero": run(torch.zeros_like),
               "mean": run(lambda x: mean.expand_as(x))}
    m = keep[:, :-1] & keep[:, 1:]
    out = {}
    for name, lp in lps.items():
        nll = -lp[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)
        out[f"ce_{name}"] = float(nll[m].mean())
        pc = lps["clean"][keep]
        out[f"kl_{name}"] = float((pc.exp() * (pc - lp[keep])).sum(-1).mean())
    return out


def test_stacked_pass_matches_separate_passes(tiny_lm, contexts) -> None:
    sae = make_sae(seed=3)
    mean = torch.randn(48)
    got = spliced_losses(tiny_lm, sae, HOOK, contexts[:1], mean=mean)
    ref = _reference(tiny_lm, sae, contexts[0].tokens, contexts[0].keep, mean)
    for k, v in ref.items():
        if k != "kl_clean":
            assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    assert got["ce_sae"] != got["ce_clean"] and got["kl_sae"] > 0
    assert got["ce_loss_score"] == pytest.approx((ref["ce_zero"] - ref["ce_sae"]) / (ref["ce_zero"] - ref["ce_clean"]),
                                                 rel=1e-3)


def test_perfect_reconstruction_scores_one(tiny_lm, contexts) -> None:
    r = spliced_losses(tiny_lm, identity_sae(), HOOK, contexts)
    assert r["ce_sae"] == pytest.approx(r["ce_clean"], abs=1e-6)
    assert r["ce_loss_score"] == pytest.approx(1.0, abs=1e-5)
    assert r["kl_div_score"] == pytest.approx(1.0, abs=1e-5) and r["kl_sae"] == pytest.approx(0.0, abs=1e-6)


def test_zero_reconstruction_scores_zero(tiny_lm, contexts) -> None:
    r = spliced_losses(tiny_lm, zero_sae(), HOOK, contexts)
    assert r["ce_sae"] == r["ce_zero"]
    assert r["ce_loss_score"] == 0.0 and r["kl_div_score"] == 0.0
    assert r["ce_zero"] > r["ce_clean"]


def test_error_term_splice_equals_clean_exactly(tiny_lm, contexts) -> None:
    r = spliced_losses(tiny_lm, make_sae(seed=5), HOOK, contexts)
    assert r["ce_error"] == r["ce_clean"]
    assert r["kl_error"] == 0.0
    assert r["ce_sae"] != r["ce_clean"]


def test_any_corpus_packs_like_the_harvest(tiny_lm) -> None:
    """--corpus: contexts packed with the model's BOS first (kept out of splicing and scoring)."""
    from evals import corpus_contexts

    batches = list(corpus_contexts(tiny_lm, "wiki-vital", context_length=32, max_contexts=5, batch_contexts=2))
    assert [b.tokens.shape[0] for b in batches] == [2, 2, 1]
    for b in batches:
        assert (b.tokens[:, 0] == tiny_lm.prefix_ids[0]).all() and not b.keep[:, 0].any() and b.keep[:, 1:].all()
    r = spliced_losses(tiny_lm, identity_sae(), HOOK, batches)
    assert r["contexts"] == 5 and r["ce_tokens"] == 5 * 30 and r["ce_loss_score"] == pytest.approx(1.0, abs=1e-5)
