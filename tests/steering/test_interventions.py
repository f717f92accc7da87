"""Interventions on the tiny real model: exact no-ops, exact deltas at the chosen positions only, hooks removed."""

from __future__ import annotations

import pytest
import torch

from steering import (
    AddVector,
    Positions,
    RunState,
    ablate_features,
    add_feature,
    clamp_features,
    generate,
    scale_features,
    steering,
)
from steering.interventions import FeatureEdit, SAEEdit, run_with_interventions
from steering.reading import encode_texts
from workbench.errors import WorkbenchError
from workbench.hooks import editing

from .conftest import HOOK

OTHER = "blocks.0.hook_resid_post"


def _tokens(lm, prompts):
    return encode_texts(lm, prompts).tokens


def _hook_acts(lm, tokens, hook=HOOK):
    out = {}

    def keep(act, site):
        out["x"] = act.detach().clone()

    with torch.no_grad(), editing(lm, hook, keep):
        lm.bridge(tokens)
    return out["x"]


def _active_feature(lm, sae, tokens):
    """A feature that fires somewhere in these tokens (so edits have something to change)."""
    x = _hook_acts(lm, tokens)
    dense = sae.encode_dense(x.reshape(-1, x.shape[-1]))
    return int((dense > 0).sum(0).argmax())


def test_coefficient_zero_leaves_logits_identical(tiny_lm, tiny_sae, prompts):
    t = _tokens(tiny_lm, prompts)
    base = run_with_interventions(tiny_lm, t, [])
    assert torch.equal(base, run_with_interventions(tiny_lm, t, [add_feature(tiny_sae, 5, 0.0)]))
    assert torch.equal(base, run_with_interventions(tiny_lm, t, [AddVector(OTHER, torch.randn(32), 0.0)]))


def test_clamp_to_own_value_leaves_logits_identical(tiny_lm, tiny_sae, prompts):
    """Multiply by 1, and set to the exact value a feature has at one token: nothing changes (error term kept)."""
    t = _tokens(tiny_lm, prompts)
    f = _active_feature(tiny_lm, tiny_sae, t)
    base = run_with_interventions(tiny_lm, t, [])
    assert torch.equal(base, run_with_interventions(tiny_lm, t, [scale_features(tiny_sae, {f: 1.0})]))
    x = _hook_acts(tiny_lm, t)
    vals = tiny_sae.encode_dense(x[0])[:, f]
    pos = int(vals.argmax())
    assert vals[pos] > 0
    one = Positions("range", pos, pos + 1)  # no padding: the range is the absolute position
    iv = clamp_features(tiny_sae, {f: float(vals[pos].detach())}, positions=one)
    with torch.no_grad(), steering(tiny_lm, [iv]):
        got = tiny_lm.bridge(t[:1])
    assert torch.equal(base[:1], got)


def test_sae_edit_equals_encode_edit_decode_plus_error(tiny_lm, tiny_sae, prompts):
    t = _tokens(tiny_lm, prompts)
    x = _hook_acts(tiny_lm, t)
    f = _active_feature(tiny_lm, tiny_sae, t)
    g = (f + 1) % tiny_sae.num_features
    edits = {"set": (f, 3.0), "multiply": (f, 2.5), "add": (g, -0.7)}
    for op, (feat, v) in edits.items():
        flat = x.reshape(-1, 32)
        codes = tiny_sae.encode_dense(flat)
        new = codes.clone()
        new[:, feat] = v if op == "set" else codes[:, feat] * v if op == "multiply" else codes[:, feat] + v
        x_hat, x_hat_new = codes @ tiny_sae.W_dec + tiny_sae.b_dec, new @ tiny_sae.W_dec + tiny_sae.b_dec
        want = (x_hat_new + (flat - x_hat)).reshape(x.shape)
        site = type("S", (), {"positions": torch.arange(x.shape[1])})()
        got = SAEEdit(tiny_sae, [FeatureEdit(feat, op, v)]).apply(x, site)
        torch.testing.assert_close(got, want.detach(), atol=1e-5, rtol=1e-5)
    zero = ablate_features(tiny_sae, [f]).apply(x, site)
    codes = tiny_sae.encode_dense(x.reshape(-1, 32))
    want = x.reshape(-1, 32) - codes[:, f:f + 1] * tiny_sae.W_dec[f]
    torch.testing.assert_close(zero.reshape(-1, 32), want.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["generated", "prompt", "last", "range"])
def test_add_changes_stream_by_coeff_w_dec_at_chosen_positions_only(tiny_lm, tiny_sae, prompts, kind):
    """Under KV-cache generation of a left-padded batch, in every forward pass the activation changes by
    exactly coeff * W_dec[f] where the positions say, and not at all elsewhere."""
    f, coeff = 7, 3.5
    pos = Positions("range", 1, 3) if kind == "range" else Positions(kind)
    iv = add_feature(tiny_sae, f, coeff, positions=pos)
    b = encode_texts(tiny_lm, prompts, side="left")
    P = b.tokens.shape[1]
    recs = {"before": [], "after": []}

    def rec(name):
        def fn(act, site):
            recs[name].append((site.positions.clone(), act.detach().clone()))
        return fn

    state = RunState(prompt_len=P, left_pad=b.left_pad)
    # Inner hooks run after outer ones: the recorders sit on either side of the intervention.
    with torch.no_grad(), editing(tiny_lm, HOOK, rec("before")), steering(tiny_lm, [iv], state=state), \
            editing(tiny_lm, HOOK, rec("after")):
        tiny_lm.bridge.generate(b.tokens, max_new_tokens=3, do_sample=False, stop_at_eos=False, return_type="tokens",
                                verbose=False, attention_mask=b.mask.long())
    assert len(recs["before"]) == len(recs["after"]) == 3
    want = coeff * tiny_sae.W_dec[f].detach()
    touched = 0
    for (p, x0), (_, x1) in zip(recs["before"], recs["after"]):
        d = x1 - x0
        rel = p.view(1, -1) - b.left_pad.view(-1, 1)
        m = {"generated": p >= P, "prompt": p < P, "last": p == P - 1}.get(kind)
        m = m.view(1, -1).expand(len(prompts), -1) if m is not None else (rel >= 1) & (rel < 3)
        assert torch.equal(d[~m], torch.zeros_like(d[~m]))
        if m.any():
            torch.testing.assert_close(d[m], want.expand(int(m.sum()), -1), atol=1e-5, rtol=0)
        touched += int(m.sum())
    assert touched > 0
    # The generated tokens' positions really continue the padded prompt under the KV cache.
    assert [int(p[0]) for p, _ in recs["before"]] == [0, P, P + 1]


def test_several_interventions_and_hooks_compose(tiny_lm, tiny_sae, prompts):
    t = _tokens(tiny_lm, prompts)
    v1, v2 = torch.randn(32), torch.randn(32)
    a, b = AddVector(OTHER, v1, 0.5), add_feature(tiny_sae, 3, 2.0)
    c = AddVector(HOOK, v2, -1.0)
    together = run_with_interventions(tiny_lm, t, [a, b, c])
    with torch.no_grad(), steering(tiny_lm, [a]), steering(tiny_lm, [b, c]):
        nested = tiny_lm.bridge(t)
    torch.testing.assert_close(together, nested, atol=1e-5, rtol=1e-5)
    # Two additions at one hook add up to one addition of their sum.
    summed = run_with_interventions(tiny_lm, t, [a, AddVector(HOOK, 2.0 * tiny_sae.W_dec[3].detach() - v2, 1.0)])
    torch.testing.assert_close(together, summed, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(together, run_with_interventions(tiny_lm, t, []))


def test_hooks_removed_when_generation_raises(tiny_lm, tiny_sae, prompts):
    t = _tokens(tiny_lm, prompts)
    base = run_with_interventions(tiny_lm, t, [])

    class Boom(AddVector):
        def delta(self, act, site):
            if site.call == 2:
                raise RuntimeError("boom")
            return super().delta(act, site)

    with pytest.raises(RuntimeError, match="boom"):
        generate(tiny_lm, prompts, [Boom(HOOK, torch.randn(32), 5.0), add_feature(tiny_sae, 1, 9.0)], max_new_tokens=5)
    with torch.no_grad():
        assert torch.equal(base, tiny_lm.bridge(t))


def test_positions_needing_the_prompt_say_so(tiny_lm, tiny_sae, prompts):
    with pytest.raises(WorkbenchError, match="prompt"):
        run_with_interventions(tiny_lm, _tokens(tiny_lm, prompts), [add_feature(tiny_sae, 1, 1.0, positions=Positions("generated"))])
    with pytest.raises(WorkbenchError, match="unknown feature index 64"):
        add_feature(tiny_sae, 64, 1.0)
    with pytest.raises(WorkbenchError, match="valid choices"):
        Positions.parse("middle")


def test_batched_generation_matches_one_by_one_and_sampling_is_seeded(tiny_lm, tiny_sae, prompts):
    iv = [add_feature(tiny_sae, 2, 1.5, positions=Positions("generated"))]
    batched = generate(tiny_lm, prompts, iv, max_new_tokens=4)
    alone = [generate(tiny_lm, [p], iv, max_new_tokens=4).new_ids[0] for p in prompts]
    assert batched.new_ids == alone
    s1 = generate(tiny_lm, prompts, iv, max_new_tokens=6, do_sample=True, seed=3)
    s2 = generate(tiny_lm, prompts, iv, max_new_tokens=6, do_sample=True, seed=3)
    s3 = generate(tiny_lm, prompts, iv, max_new_tokens=6, do_sample=True, seed=4)
    assert s1.new_ids == s2.new_ids
    assert s1.new_ids != s3.new_ids


def test_greedy_generation_equals_a_loop_without_cache(tiny_lm, tiny_sae, prompts):
    """The KV-cached, left-padded, steered generation reads the whole prompt (a loop re-running every token agrees)."""
    iv = add_feature(tiny_sae, 4, 2.0, positions=Positions("generated"))
    out = generate(tiny_lm, prompts, [iv], max_new_tokens=3)
    for p, ids in zip(prompts, out.new_ids):
        seq = encode_texts(tiny_lm, [p]).tokens
        plen = seq.shape[1]
        for want in ids:
            with torch.no_grad(), steering(tiny_lm, [iv], prompt_len=plen):
                nxt = int(tiny_lm.bridge(seq)[0, -1].argmax())
            assert nxt == want
            seq = torch.cat([seq, torch.tensor([[nxt]])], 1)


def test_rowwise_vectors_steer_each_row_as_if_alone(tiny_lm, prompts):
    """A `[rows, 1, d]` vector gives every row its own push (how a sweep runs all settings in one batch)."""
    vecs = torch.randn(len(prompts), 32, generator=torch.Generator().manual_seed(5)) * 3
    together = generate(tiny_lm, prompts, [AddVector(HOOK, vecs.unsqueeze(1), 1.0)], max_new_tokens=4)
    alone = [generate(tiny_lm, [p], [AddVector(HOOK, v, 1.0)], max_new_tokens=4).new_ids[0]
             for p, v in zip(prompts, vecs)]
    assert together.new_ids == alone
