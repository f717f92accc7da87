"""What the steering comparison computes costs less, and still gives the same numbers (issue 18, cost).

Each speed-up has two checks on the tiny model: that it does less work (rows counted where the
unembedding reads them; coefficients counted where the KL is asked for), and that its result is the
plain computation's, written here from the definitions one prompt at a time on full logits."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from steering import AddVector, Positions, generate, steering
from steering.measures import Judge, score_generation
from steering.selection.gradient import target_objective

from .conftest import HOOK

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import steering_compare as sc  # noqa: E402

PROMPTS = ["the cat sat on the mat", "a dog", "what is the capital of france and why"]


class UnembedRows:
    """Counts the positions (per row) that reach the unembedding in each forward pass."""

    def __init__(self, lm):
        self.lm, self.widths, self.full, self.inputs = lm, [], [], []

    def __enter__(self):
        def post(mod, args, out):  # the logits it made: [rows, positions, vocab]
            self.widths.append(out.shape[1])

        def pre_model(mod, args, kwargs):
            x = args[0] if args else kwargs.get("input_ids")
            self.full.append(x.shape[1])
            self.inputs.append(tuple(x.shape))

        self.h = [self.lm.bridge.unembed.register_forward_hook(post),
                  self.lm.bridge.original_model.register_forward_pre_hook(pre_model, with_kwargs=True)]
        return self

    def __exit__(self, *exc):
        for h in self.h:
            h.remove()


def _ids(lm, text):
    return list(lm.prefix_ids) + lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def _plain_last_target_logprob(lm, text, targets, ivs=()):
    """log sum_{t in targets} p(t | text) at the text's last token, from the full logits of the text alone."""
    with torch.no_grad(), steering(lm, list(ivs)):
        lp = F.log_softmax(lm.bridge(torch.tensor([_ids(lm, text)]))[0, -1].float(), -1)
    return float(torch.logsumexp(lp[sorted(set(targets))], 0))


def test_objective_unembeds_only_each_prompts_last_token(tiny_lm):
    with UnembedRows(tiny_lm) as seen, torch.no_grad():
        target_objective(tiny_lm, PROMPTS, [5, 9])
    assert seen.full == [max(len(_ids(tiny_lm, p)) for p in PROMPTS)]
    assert seen.widths == [1]


def test_objective_per_prompt_equals_the_plain_computation(tiny_lm):
    v = torch.randn(32, generator=torch.Generator().manual_seed(2))
    iv = AddVector(HOOK, v, 2.0, Positions("all"))
    from steering.selection.gradient import target_logprobs

    got = target_logprobs(tiny_lm, PROMPTS, [5, 9, 11], [iv])
    want = [_plain_last_target_logprob(tiny_lm, p, [5, 9, 11], [iv]) for p in PROMPTS]
    assert got.tolist() == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert float(target_objective(tiny_lm, PROMPTS, [5, 9, 11], [iv])) == pytest.approx(sum(want) / 3, rel=1e-5)


def test_objective_of_many_settings_equals_one_setting_at_a_time(tiny_lm):
    """The comparison's objective for K settings (each row of a pass its own vector) is, per setting and
    prompt, the plain last-token target log-prob of the prompt steered with that vector alone."""
    from steering.selection.gradient import steered_target_logprobs

    vecs = torch.randn(3, 32, generator=torch.Generator().manual_seed(4)) * 2
    vecs[1] = 0
    got = steered_target_logprobs(tiny_lm, HOOK, PROMPTS, [5, 9], vecs, rows_per_pass=4)
    want = [[_plain_last_target_logprob(tiny_lm, p, [5, 9], [AddVector(HOOK, v, 1.0, Positions("all"))])
             for p in PROMPTS] for v in vecs]
    assert got.shape == (3, len(PROMPTS))
    assert got.flatten().tolist() == pytest.approx([x for r in want for x in r], rel=1e-5, abs=1e-6)


class LayerCalls:
    """Counts the forward passes each decoder layer really runs."""

    def __init__(self, lm):
        self.lm, self.calls = lm, {}

    def __enter__(self):
        self.h = [b.original_component.register_forward_pre_hook(lambda m, a, i=i: self.calls.update(
            {i: self.calls.get(i, 0) + 1})) for i, b in enumerate(self.lm.bridge.blocks)]
        return self

    def __exit__(self, *exc):
        for h in self.h:
            h.remove()


def test_objective_of_many_settings_runs_the_blocks_before_the_hook_once(tiny_lm):
    from steering.selection.gradient import steered_target_logprobs

    vecs = torch.randn(6, 32, generator=torch.Generator().manual_seed(5))
    with LayerCalls(tiny_lm) as seen:
        steered_target_logprobs(tiny_lm, HOOK, PROMPTS, [5, 9], vecs, rows_per_pass=6)  # 3 passes of 2 settings
    # HOOK is blocks.1's output: blocks 0-1 once (+ 1: the unsteered full forward the resumed one is checked
    # against), block 2 once per pass (+ 2: that check)
    assert seen.calls == {0: 2, 1: 2, 2: 3 + 2}


def test_kl_of_many_settings_runs_the_blocks_before_the_hook_once(tiny_lm):
    from steering import NeutralKL

    kl = NeutralKL(tiny_lm, ["the committee met on tuesday", "a letter", "he fixed the broken chair"], batch_size=2)
    vecs = torch.randn(4, 32, generator=torch.Generator().manual_seed(6))
    with LayerCalls(tiny_lm) as seen:
        many = kl.many(HOOK, vecs, rows_per_pass=4)  # batch of 2 texts: 2 passes of 2 settings; of 1: 1 pass
    # blocks 0-1 once per batch of texts; block 2 once per pass, + 1: resuming unsteered is checked once
    assert seen.calls == {0: 2, 1: 2, 2: 3 + 1}
    assert many == pytest.approx([kl([AddVector(HOOK, v, 1.0)]) for v in vecs], rel=1e-5, abs=1e-7)


def test_judge_reads_each_prompt_once_and_unembeds_only_what_predicts_generated_tokens(tiny_lm):
    """Two sampled decodes of each prompt judged together: each distinct prompt goes through the model
    once (its last position is the only prompt logit used), and each group of continuations runs its
    generated tokens only, unembedding the positions that predict a later generated token."""
    g = generate(tiny_lm, PROMPTS * 2, [], max_new_tokens=5, do_sample=True, seed=1)
    with UnembedRows(tiny_lm) as seen, torch.no_grad():
        score_generation(tiny_lm, g, Judge(HOOK, target_words=("cat",)), batch_size=8)
    want_in, want_out = [], []
    for p in PROMPTS:
        ids = _ids(tiny_lm, p)
        w = max(len(n) for q, n in zip(g.prompt_ids, g.new_ids) if q == ids)
        want_in += [(1, len(ids)), (2, w)]
        want_out += [len(ids), w - 1]
    assert seen.inputs == want_in
    assert seen.widths == want_out


def test_judge_equals_the_plain_computation_on_full_logits(tiny_lm):
    gen = generate(tiny_lm, PROMPTS, [AddVector(HOOK, torch.ones(32), 1.0)], max_new_tokens=6, do_sample=True,
                   seed=3)
    judge = Judge(HOOK, target_words=("cat", "dog"))
    tids = judge.target_ids(tiny_lm)
    got = score_generation(tiny_lm, gen, judge, batch_size=2)
    for k, (p_ids, new) in enumerate(zip(gen.prompt_ids, gen.new_ids)):
        ids, p, n = p_ids + new, len(p_ids), len(new)
        with torch.no_grad():
            lp = F.log_softmax(tiny_lm.bridge(torch.tensor([ids]))[0].float(), -1)
        nll = -sum(float(lp[t - 1, ids[t]]) for t in range(p, p + n)) / n
        tlp = sum(float(torch.logsumexp(lp[t - 1, tids], 0)) for t in range(p, p + n)) / n
        assert got[k]["ppl"] == pytest.approx(math.exp(nll), rel=1e-5)
        assert got[k]["target_logprob"] == pytest.approx(tlp, rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------- the coefficient walk

def _fake_measure(kl_of, obj_of, calls):
    def measure(methods, coeff, stop_kl):
        calls.append((tuple(methods), coeff))
        kls = [kl_of(m, coeff) for m in methods]
        return kls, [obj_of(m, coeff) if k <= stop_kl else None for m, k in zip(methods, kls)]
    return measure


def test_grid_walk_stops_a_method_once_its_kl_passes_the_largest_budget():
    coeffs = [0.05, 0.1, 0.2, 0.3, 0.4]
    kl = {"a": lambda c: 3 * c * c, "b": lambda c: 0.5 * c * c, "n": lambda c: math.nan}
    obj = lambda m, c: -1.0 / (c + 0.1)  # noqa: E731 - rises with the coefficient
    calls = []
    got = sc.walk_grid(["a", "b", "n"], coeffs, _fake_measure(lambda m, c: kl[m](c), obj, calls), [0.25, 0.1],
                       base_objective=-10.0)
    # a: KL 0.0075, 0.03, 0.12, 0.27 (over 0.25: measured, then stop) -> 0.4 skipped
    assert [r["coeff"] for r in got["a"]["grid"]] == [0.0, 0.05, 0.1, 0.2, 0.3]
    assert got["a"]["skipped"] == [0.4]
    assert got["a"]["grid"][-1]["objective"] is None  # over every budget: never a candidate, not scored
    assert got["b"]["skipped"] == [] and len(got["b"]["grid"]) == 6
    assert got["n"]["skipped"] == [0.1, 0.2, 0.3, 0.4]  # a NaN KL is never within a budget
    assert [c for _, c in calls] == coeffs and calls[-1][0] == ("b",)
    # with KL rising in the coefficient, the choice is the full grid's
    for m in ("a", "b"):
        full = [{"coeff": 0.0, "kl": 0.0, "objective": -10.0}] + [
            {"coeff": c, "kl": kl[m](c), "objective": obj(m, c)} for c in coeffs]
        for b in (0.25, 0.1):
            assert got[m]["chosen"][str(b)] == sc.pick_coeff(full, b)
    assert got["n"]["chosen"] == {"0.25": 0.0, "0.1": 0.0}


def test_judging_settings_together_gives_each_settings_own_rows(tiny_lm):
    """The comparison judges a chunk of settings in one call (prompts shared across them): each setting
    gets the rows it gets judged alone, in the same order."""
    a = argparse.Namespace(samples=1, max_new_tokens=4)
    vecs = torch.randn(2, 32, generator=torch.Generator().manual_seed(8)) * 3
    gens = sc.gen_rows(tiny_lm, PROMPTS, vecs, HOOK, a)  # 2 settings x (greedy + 1 sample)
    judge = Judge(HOOK, target_words=("cat", "the"))
    together = sc.judged_many(tiny_lm, gens, judge)
    for rows, g in zip(together, gens):
        alone = sc.judged(tiny_lm, g, judge)
        assert [(r["decode"], r["prompt"], r["text"]) for r in rows] == [(r["decode"], r["prompt"], r["text"])
                                                                         for r in alone]
        for r, s in zip(rows, alone):
            assert [r[k] for k in sc.MEASURES] == pytest.approx([s[k] for k in sc.MEASURES], rel=1e-5, nan_ok=True)
