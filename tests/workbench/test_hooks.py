"""The hooks floor on a tiny random Llama bridged through TransformerLens (no mocks).

References are written here without workbench.hooks: plain torch forward hooks on the Hugging
Face decoder layers, and a full uncached forward pass.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from workbench import HookSite, LoadedModel, WorkbenchError, capture, editing, replacing  # noqa: E402

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from workbench.models import from_hf_model, offline_path

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(offline_path("minilm-l6")))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return from_hf_model(LlamaForCausalLM(cfg), tokenizer=tok, model_id="tiny-llama")


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(1000, 2000, (2, 7), generator=torch.Generator().manual_seed(1))


def _logits(lm: LoadedModel, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return lm.bridge(tokens)


def _no_hooks_left(lm: LoadedModel) -> bool:
    points = lm.bridge.hook_dict.values()
    return (all(not hp._forward_hooks and not hp._forward_pre_hooks for hp in points)
            and not lm.bridge.original_model._forward_pre_hooks)


def _hf_layers(lm: LoadedModel) -> list[torch.nn.Module]:
    return list(lm.bridge.original_model.model.layers)


def test_replacing_with_itself_leaves_logits_bit_identical(lm, tokens) -> None:
    clean = _logits(lm, tokens)
    with replacing(lm, {h: (lambda a, s: a) for h in ("blocks.0.hook_resid_post", HOOK, "blocks.2.hook_mlp_out")}):
        same = _logits(lm, tokens)
    assert torch.equal(same, clean)
    # and a replacement that changes something does change the logits (the hook really fires)
    with replacing(lm, HOOK, lambda a, s: a * 2):
        assert not torch.allclose(_logits(lm, tokens), clean)


def test_replacing_with_zeros_equals_a_hand_written_zero_ablation(lm, tokens) -> None:
    with replacing(lm, HOOK, lambda a, s: torch.zeros_like(a)):
        ours = _logits(lm, tokens)

    def zero_layer_output(module, args, output):  # blocks.1.hook_resid_post is decoder layer 1's output
        if isinstance(output, tuple):
            return (torch.zeros_like(output[0]), *output[1:])
        return torch.zeros_like(output)

    handle = _hf_layers(lm)[1].register_forward_hook(zero_layer_output)
    try:
        ref = _logits(lm, tokens)
    finally:
        handle.remove()
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0)
    assert not torch.allclose(ours, _logits(lm, tokens))


def test_hooks_are_gone_after_the_block_and_after_an_exception(lm, tokens) -> None:
    clean = _logits(lm, tokens)
    with replacing(lm, HOOK, lambda a, s: torch.zeros_like(a)):
        assert not _no_hooks_left(lm)
    assert _no_hooks_left(lm)
    assert torch.equal(_logits(lm, tokens), clean)

    with pytest.raises(RuntimeError, match="body failed"):
        with editing(lm, {HOOK: lambda a, s: a.zero_(), "blocks.0.hook_resid_post": lambda a, s: None}):
            _logits(lm, tokens)
            raise RuntimeError("body failed")
    assert _no_hooks_left(lm)
    assert torch.equal(_logits(lm, tokens), clean)

    def broken(a, s):
        raise KeyError("inside the hook")

    with pytest.raises(KeyError):
        with replacing(lm, HOOK, broken):
            _logits(lm, tokens)
    assert _no_hooks_left(lm)


def test_unknown_hook_is_refused_before_running_and_lists_valid_ones(lm) -> None:
    with pytest.raises(WorkbenchError, match=r"blocks\.99\.hook_resid_post.*valid hook points: .*blocks\.\{0\.\.2\}\.hook_resid_post"):
        with replacing(lm, {HOOK: lambda a, s: a, "blocks.99.hook_resid_post": lambda a, s: a}):
            pytest.fail("the body must not run")
    assert _no_hooks_left(lm)
    with pytest.raises(WorkbenchError, match="hook_nope"):
        capture(lm, torch.zeros(1, 3, dtype=torch.long), ["hook_nope"])


def test_editing_two_hooks_at_once_matches_two_hand_written_edits(lm, tokens) -> None:
    d = lm.d_model
    v0, v1 = torch.randn(d, generator=torch.Generator().manual_seed(2)), torch.randn(d, generator=torch.Generator().manual_seed(3))

    def add_v0(a, s):
        a += v0  # in place, returns None

    with editing(lm, {"blocks.0.hook_resid_post": add_v0, "blocks.2.hook_resid_post": lambda a, s: a - v1}):
        ours = _logits(lm, tokens)

    def add(v):
        def fn(module, args, output):
            return (output[0] + v, *output[1:]) if isinstance(output, tuple) else output + v
        return fn

    layers = _hf_layers(lm)
    handles = [layers[0].register_forward_hook(add(v0)), layers[2].register_forward_hook(add(-v1))]
    try:
        ref = _logits(lm, tokens)
    finally:
        for h in handles:
            h.remove()
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)


def test_hook_site_positions_during_generate_with_a_kv_cache(lm, tokens) -> None:
    sites: list[HookSite] = []
    seqs: list[int] = []

    def record(a, s):
        sites.append(s)
        seqs.append(a.shape[1])
        return a

    prompt = tokens.shape[1]
    with replacing(lm, HOOK, record):
        out = lm.bridge.generate(tokens, max_new_tokens=4, do_sample=False, verbose=False, stop_at_eos=False,
                                 use_past_kv_cache=True)
    assert out.shape == (2, prompt + 4)
    assert [s.call for s in sites] == [0, 1, 2, 3]
    assert seqs == [prompt, 1, 1, 1]  # the cache really is used: later steps see only the new token
    assert sites[0].positions.tolist() == list(range(prompt))
    assert [s.positions.tolist() for s in sites[1:]] == [[prompt], [prompt + 1], [prompt + 2]]
    assert all(s.name == HOOK for s in sites)

    sites.clear()
    with replacing(lm, HOOK, record):  # without a cache every step sees the whole sequence
        lm.bridge.generate(tokens, max_new_tokens=2, do_sample=False, verbose=False, stop_at_eos=False,
                           use_past_kv_cache=False)
    assert [s.positions.tolist() for s in sites] == [list(range(prompt)), list(range(prompt + 1))]


def test_capture_with_stop_equals_the_full_runs_cache(lm, tokens) -> None:
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]
    with torch.no_grad():
        _, full = lm.bridge.run_with_cache(tokens)
    ran: list[int] = []
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(_hf_layers(lm))]
    try:
        acts = capture(lm, tokens, hooks, stop=True)
    finally:
        for h in handles:
            h.remove()
    assert ran == [0, 1]  # stopped after the deepest hooked block
    for h in hooks:
        assert torch.equal(acts[h], full[h])
    assert torch.equal(capture(lm, tokens, hooks, stop=False)["blocks.1.hook_mlp_out"], full["blocks.1.hook_mlp_out"])


def test_capture_sees_an_active_replacement(lm, tokens) -> None:
    with replacing(lm, "blocks.0.hook_resid_post", lambda a, s: torch.zeros_like(a)):
        acts = capture(lm, tokens, ["blocks.0.hook_resid_post"])
    assert torch.count_nonzero(acts["blocks.0.hook_resid_post"]) == 0


def test_unembed_and_special_ids(lm) -> None:
    assert torch.equal(lm.unembed, lm.bridge.original_model.lm_head.weight.T)
    tok = lm.tokenizer
    assert {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id} <= lm.special_ids
    assert tok.convert_tokens_to_ids("the") not in lm.special_ids


def test_a_replacement_of_the_wrong_shape_is_refused_and_leaves_no_hooks(lm, tokens) -> None:
    with pytest.raises(ValueError, match=r"blocks\.1\.hook_resid_post must return a tensor of shape \(2, 7, 32\); got NoneType"):
        with replacing(lm, HOOK, lambda a, s: None):
            _logits(lm, tokens)
    with pytest.raises(ValueError, match=r"got \(2, 7, 16\)"):
        with editing(lm, HOOK, lambda a, s: a[..., :16]):
            _logits(lm, tokens)
    assert _no_hooks_left(lm)


def test_nested_blocks_run_outer_then_inner_and_count_their_own_calls(lm, tokens) -> None:
    calls: list[tuple[str, int]] = []

    def outer(a, s):
        calls.append(("outer", s.call))
        return a + 1

    def inner(a, s):
        calls.append(("inner", s.call))
        return a * 0

    with replacing(lm, HOOK, outer):
        _logits(lm, tokens)
        with replacing(lm, HOOK, inner), replacing(lm, "blocks.1.hook_mlp_out", lambda a, s: a):
            with torch.no_grad():
                _, cache = lm.bridge.run_with_cache(tokens, names_filter=[HOOK])
    assert torch.count_nonzero(cache[HOOK]) == 0  # outer's +1, then inner's *0
    assert calls == [("outer", 0), ("outer", 1), ("inner", 0)]
    assert _no_hooks_left(lm)
