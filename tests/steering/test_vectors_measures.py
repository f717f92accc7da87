"""Steering vectors and measures against simple references written here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from steering import NeutralKL, diffmean, diffmean_sae, generate, pca_diff, stats_from_activations
from steering.interventions import AddVector, add_feature
from steering.measures import Judge, score_generation
from steering.reading import hook_activations
from steering.vectors import concept_feature
from workbench.errors import WorkbenchError
from workbench.hooks import capture, replacing

from .conftest import HOOK

POS = ["the sea is blue and wide", "waves on the beach", "the ocean"]
NEG = ["the tax form is due", "a chair in the office", "he signed the contract today"]


def _per_text(lm, texts, read):
    """Reference: each text alone, BOS first, activations at HOOK, BOS dropped."""
    out = []
    for t in texts:
        ids = list(lm.prefix_ids) + lm.tokenizer(t, add_special_tokens=False)["input_ids"]
        a = capture(lm, torch.tensor([ids]), [HOOK])[HOOK][0, len(lm.prefix_ids):]
        out.append(a.mean(0) if read == "mean" else a[-1])
    return torch.stack(out)


@pytest.mark.parametrize("read", ["mean", "last"])
def test_diffmean_is_the_mean_difference(tiny_lm, read):
    pos, neg = hook_activations(tiny_lm, POS, HOOK, read=read), hook_activations(tiny_lm, NEG, HOOK, read=read)
    rp, rn = _per_text(tiny_lm, POS, read), _per_text(tiny_lm, NEG, read)
    torch.testing.assert_close(pos, rp, atol=1e-5, rtol=1e-5)  # padding in the batch changes nothing
    torch.testing.assert_close(diffmean(pos, neg), rp.mean(0) - rn.mean(0), atol=1e-5, rtol=1e-5)


def test_pca_diff_is_the_top_eigenvector_of_the_centred_differences():
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g)
    pos[:, 2] += 3 * torch.randn(20, generator=g)  # one direction varies most across pairs
    d = pos - neg
    c = d - d.mean(0)
    evals, evecs = torch.linalg.eigh(c.T @ c)
    ref = evecs[:, -1]
    v = pca_diff(pos, neg)
    assert abs(float(v @ ref)) == pytest.approx(1.0, abs=1e-5)
    assert float((d @ v).mean()) >= 0  # signed toward the positives
    with pytest.raises(WorkbenchError, match="same number"):
        pca_diff(pos, neg[:5])


def test_diffmean_through_sae_and_concept_feature(tiny_sae):
    g = torch.Generator().manual_seed(1)
    pos, neg = torch.randn(10, 32, generator=g) + 1.0, torch.randn(12, 32, generator=g)
    dp, dn = tiny_sae.encode_dense(pos).mean(0), tiny_sae.encode_dense(neg).mean(0)
    want = (dp - dn) @ tiny_sae.W_dec
    torch.testing.assert_close(diffmean_sae(tiny_sae, pos, neg), want.detach(), atol=1e-5, rtol=1e-5)
    keep = (dp - dn).abs().topk(3).indices
    sparse = torch.zeros_like(dp)
    sparse[keep] = (dp - dn)[keep]
    torch.testing.assert_close(diffmean_sae(tiny_sae, pos, neg, top=3), (sparse @ tiny_sae.W_dec).detach(),
                               atol=1e-5, rtol=1e-5)
    f, rise = concept_feature(tiny_sae, pos, neg)
    assert f == int((dp - dn).argmax()) and rise == pytest.approx(float((dp - dn).max()), rel=1e-5)
    with pytest.raises(WorkbenchError, match="empty prompt set"):
        diffmean(pos[:0], neg)


def test_feature_stats_match_dense_reference(tiny_sae):
    x = torch.randn(300, 32, generator=torch.Generator().manual_seed(2))
    s = stats_from_activations(x, tiny_sae, batch_size=64)
    dense = tiny_sae.encode_dense(x).detach()
    fired = (dense > 0).float()
    torch.testing.assert_close(s.max, dense.max(0).values.clamp_min(0), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(s.mean, dense.mean(0), atol=1e-6, rtol=1e-5)
    want_active = torch.where(fired.sum(0) > 0, dense.sum(0) / fired.sum(0).clamp_min(1), torch.zeros(64))
    torch.testing.assert_close(s.mean_active, want_active, atol=1e-5, rtol=1e-5)
    assert s.mean_norm == pytest.approx(float(x.norm(dim=1).mean()), rel=1e-6)


def test_perplexity_feature_and_probe_scores_match_references(tiny_lm, tiny_sae, prompts):
    gen = generate(tiny_lm, prompts, [], max_new_tokens=4)
    probe = torch.nn.functional.normalize(torch.randn(32), dim=0)
    judge = Judge(HOOK, sae=tiny_sae, feature=3, probe=probe, target_words=("cat", "dog"))
    scores = score_generation(tiny_lm, gen, judge, batch_size=3)
    tids = judge.target_ids(tiny_lm)
    for k in range(len(prompts)):
        ids = gen.prompt_ids[k] + gen.new_ids[k]
        p, n = len(gen.prompt_ids[k]), len(gen.new_ids[k])
        with torch.no_grad():
            lp = F.log_softmax(tiny_lm.bridge(torch.tensor([ids]))[0].float(), -1)
        nll = -sum(float(lp[t - 1, ids[t]]) for t in range(p, p + n)) / n
        assert scores[k]["ppl"] == pytest.approx(math.exp(nll), rel=1e-4)
        tlp = sum(float(torch.logsumexp(lp[t - 1, tids], 0)) for t in range(p, p + n)) / n
        assert scores[k]["target_logprob"] == pytest.approx(tlp, rel=1e-4, abs=1e-5)
        x = capture(tiny_lm, torch.tensor([ids]), [HOOK])[HOOK][0, p:p + n]
        assert scores[k]["feature"] == pytest.approx(float(tiny_sae.encode_dense(x)[:, 3].mean()), abs=1e-5)
        assert scores[k]["probe"] == pytest.approx(float((x @ probe).mean()), rel=1e-4, abs=1e-5)


def test_kl_on_neutral_text(tiny_lm, tiny_sae):
    texts = ["the committee met on tuesday", "a letter to her grandmother was written"]
    kl = NeutralKL(tiny_lm, texts)
    assert kl([add_feature(tiny_sae, 2, 0.0)]) == 0.0
    iv = AddVector(HOOK, torch.randn(32), 3.0)
    got = kl([iv])
    total, count = 0.0, 0
    for t in texts:
        ids = torch.tensor([list(tiny_lm.prefix_ids) + tiny_lm.tokenizer(t, add_special_tokens=False)["input_ids"]])
        from steering import steering

        with torch.no_grad():
            a = F.log_softmax(tiny_lm.bridge(ids)[0].float(), -1)
            with steering(tiny_lm, [iv]):
                b = F.log_softmax(tiny_lm.bridge(ids)[0].float(), -1)
        total += float(F.kl_div(b, a, log_target=True, reduction="sum"))
        count += ids.shape[1]
    assert got == pytest.approx(total / count, rel=1e-4)
    assert got > 0


def test_target_words_match_whole_words_and_plurals():
    from steering.measures import target_pattern

    p = target_pattern(("sea", "wave", "beach"))
    assert [bool(p.search(t)) for t in ["the sea.", "Waves!", "beaches", "search", "seat", "microwave"]] == \
        [True, True, True, False, False, False]


def test_kl_of_many_settings_in_one_pass_equals_one_at_a_time(tiny_lm):
    kl = NeutralKL(tiny_lm, ["the committee met on tuesday", "a letter", "he fixed the broken chair with glue"],
                   batch_size=2)
    vecs = torch.randn(5, 32, generator=torch.Generator().manual_seed(3))
    vecs[2] = 0
    many = kl.many(HOOK, vecs, rows_per_pass=4)
    one = [kl([AddVector(HOOK, v, 1.0)]) for v in vecs]
    assert many == pytest.approx(one, rel=1e-4, abs=1e-7)
    assert many[2] == 0.0


@pytest.mark.parametrize("kind", ["prompt", "last", "generated", "all"])
def test_kl_steers_neutral_text_the_way_the_prompts_are(tiny_lm, kind):
    """Issue 22 item 3: under `prompt` every neutral token is a prompt token, under `last` its last token is
    the prompt's last, under `generated` every token is one the model writes. The KL is averaged over the
    positions the steering can reach (the first steered token and every later one; before it a causal model
    is unchanged), so steering one token is not diluted by the tokens it cannot touch."""
    from steering import Positions, steering

    texts = ["the committee met on tuesday", "a letter", "he fixed the broken chair with glue and nails"]
    v = torch.randn(32, generator=torch.Generator().manual_seed(7))
    kl = NeutralKL(tiny_lm, texts, batch_size=2)  # two batches, one of them right-padded
    got = kl([AddVector(HOOK, v, 3.0, Positions(kind))])
    many = kl.many(HOOK, 3.0 * v.unsqueeze(0), Positions(kind))[0]
    total, count = 0.0, 0
    for t in texts:
        ids = list(tiny_lm.prefix_ids) + tiny_lm.tokenizer(t, add_special_tokens=False)["input_ids"]
        n = len(ids)
        first = n - 1 if kind == "last" else 0
        hit = torch.arange(n) >= first  # steered: every token, or only the last one

        def add(act, site, hit=hit):  # the reference steers by hand, one text at a time
            return act + 3.0 * v * hit[site.positions].view(1, -1, 1).to(act.dtype)

        with torch.no_grad():
            a = F.log_softmax(tiny_lm.bridge(torch.tensor([ids]))[0].float(), -1)
            with replacing(tiny_lm, {HOOK: add}):
                b = F.log_softmax(tiny_lm.bridge(torch.tensor([ids]))[0].float(), -1)
        per_pos = (a.exp() * (a - b)).sum(-1)
        assert float(per_pos[:first].abs().sum()) < 1e-4
        total += float(per_pos[first:].sum())
        count += n - first
    assert got > 0
    assert got == pytest.approx(total / count, rel=1e-4)
    assert many == pytest.approx(total / count, rel=1e-4)
