"""The SAE spliced into a real (tiny, random) model: scores at their fixed points, the error term's
rounding, and the stacked pass against a plain reference that runs each variant as its own forward
pass (SAEBench's own procedure is the reference of test_splice_saebench.py)."""

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
    sep = r.manifest["tokenizer"]["separator_id"]
    flat = [(t, k) for cb in contexts for t, k in zip(cb.tokens, cb.keep)]
    assert len(flat) == 6 and contexts[0].tokens.shape == (3, 32)
    seps = 0
    for i, (t, k) in enumerate(flat):
        sel = ctx_ids == first + i
        assert t[0] == bos and not k[0]
        assert torch.equal(t[pos[sel].long()], tok[sel].long())
        # every stored row is text except the EOS separators, which SAEBench neither splices nor scores
        text = pos[sel & (tok != sep)].long()
        assert torch.equal(k.nonzero().flatten(), text.sort().values)
        seps += int((sel & (tok == sep)).sum())
    assert seps > 0  # the separators are there, and kept out


def _reference(lm, sae, tokens, keep, mean):
    """Each variant as its own forward pass, through the model's own hook API, CE and KL by the textbook:
    the SAE (and its error term, in the activation dtype) at text positions, ablations everywhere."""
    def run(replace, where):
        def hook(act, hook=None):
            out = act.clone()
            if replace is not None:
                out[where] = replace(act[where])
            return out
        with lm.bridge.hooks(fwd_hooks=[(HOOK, hook)]):
            return torch.log_softmax(lm.bridge(tokens).float(), -1)

    every = torch.ones_like(keep)
    with torch.no_grad():
        lps = {"clean": run(None, keep), "sae": run(lambda x: sae(x), keep), "zero": run(torch.zeros_like, every),
               "mean": run(lambda x: mean.expand_as(x), every), "error": run(lambda x: sae(x) + (x - sae(x)), keep)}
    m = keep[:, :-1]
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
    """Spliced at every position (BOS too), a zero reconstruction is the zero ablation itself."""
    r = spliced_losses(tiny_lm, zero_sae(), HOOK, contexts, splice_positions="all")
    assert r["ce_sae"] == r["ce_zero"]
    assert r["ce_loss_score"] == 0.0 and r["kl_div_score"] == 0.0
    assert r["ce_zero"] > r["ce_clean"]


def _broken_sae(scale: float = 1e3):
    """A decoder whose output is `scale` times noise: x_hat dwarfs x, so x_hat + (x - x_hat) rounds badly."""
    sae = make_sae(seed=6)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(sae.W_dec.shape, generator=g) * scale)
    return sae


def test_error_term_is_near_clean_for_a_sane_sae(tiny_lm, contexts) -> None:
    """float32: x_hat + (x - x_hat) is x up to rounding, so CE and KL barely move."""
    r = spliced_losses(tiny_lm, make_sae(seed=5), HOOK, contexts)
    assert r["ce_sae"] != r["ce_clean"]
    assert abs(r["ce_error_diff"]) < 1e-5 and r["kl_error"] < 1e-8
    assert r["error_rel_diff"] < 1e-6 and r["error_max_abs_diff"] < 1e-5
    assert r["ce_error_diff"] == r["ce_error"] - r["ce_clean"]


def test_error_term_can_fail(tiny_lm, contexts) -> None:
    """An SAE whose outputs are 1e3 x noise: its error-term splice, computed in float32 as users compute it,
    is no longer x (a float64 round trip would hide this: it returns x bit for bit whatever x_hat is)."""
    sane = spliced_losses(tiny_lm, make_sae(seed=5), HOOK, contexts)
    r = spliced_losses(tiny_lm, _broken_sae(), HOOK, contexts)
    assert r["ce_error"] != r["ce_clean"] and r["kl_error"] > 0.0
    assert r["error_rel_diff"] > 1e-5 and r["error_rel_diff"] > 100 * sane["error_rel_diff"]
    assert r["error_max_abs_diff"] > 100 * sane["error_max_abs_diff"]
    assert r["definition"]["error_term"].endswith("(float32) at the spliced positions")


@pytest.fixture(scope="module")
def tiny_lm_bf16(tiny_model_dir):
    from workbench.models import load_model

    return load_model(str(tiny_model_dir), device="cpu", dtype=torch.bfloat16)


def test_error_term_in_bf16_shows_the_rounding(tiny_lm_bf16, contexts) -> None:
    """bf16 activations: the broken SAE's error-term splice moves the loss visibly; a sane one's far less."""
    sane = spliced_losses(tiny_lm_bf16, make_sae(seed=5), HOOK, contexts[:1])
    r = spliced_losses(tiny_lm_bf16, _broken_sae(), HOOK, contexts[:1])
    assert r["kl_error"] > 1e-3 and r["error_rel_diff"] > 0.1
    assert r["definition"]["error_term"].endswith("(bfloat16) at the spliced positions")
    assert sane["error_rel_diff"] < 0.05 and sane["kl_error"] < r["kl_error"] / 10


def test_any_corpus_packs_like_the_harvest(tiny_lm) -> None:
    """--corpus: contexts packed with the model's BOS first (kept out of splicing and scoring)."""
    from evals import corpus_contexts

    batches = list(corpus_contexts(tiny_lm, "wiki-vital", context_length=32, max_contexts=5, batch_contexts=2))
    assert [b.tokens.shape[0] for b in batches] == [2, 2, 1]
    text = 0
    for b in batches:
        assert (b.tokens[:, 0] == tiny_lm.prefix_ids[0]).all() and not b.keep[:, 0].any()
        assert torch.equal(b.keep[:, 1:], b.tokens[:, 1:] != tiny_lm.separator_id)  # separators out
        text += int(b.keep.sum())
    r = spliced_losses(tiny_lm, identity_sae(), HOOK, batches)
    assert r["contexts"] == 5 and r["ce_loss_score"] == pytest.approx(1.0, abs=1e-5)
    assert r["kl_tokens"] == text and r["ce_tokens"] == text - sum(int(b.keep[:, -1].sum()) for b in batches)


def test_unknown_splice_positions_is_one_clear_line(tiny_lm, contexts) -> None:
    from evals import evaluate
    from workbench.errors import WorkbenchError

    with pytest.raises(WorkbenchError, match=r"unknown splice positions 'rows'; valid choices: text, all"):
        spliced_losses(tiny_lm, make_sae(), HOOK, contexts[:1], splice_positions="rows")
    with pytest.raises(WorkbenchError, match=r"unknown splice positions 'bos'"):  # before any long pass
        evaluate(make_sae(), None, "none", splice_positions="bos")
