"""The logit lens of a direction against the model's own final norm and unembedding.

The reference is written in the model's terms, not ours: the logits the model writes when its
residual stream points along `d`, less those it writes for an empty residual,
`lm_head(final_norm(d)) - lm_head(final_norm(0))` (which drops every bias: the norm's beta and
the unembedding's bias). The lens must give the same top and bottom tokens and logits
proportional to these, one positive factor per direction (the norm's 1 / rms(d), which a
direction has no meaning for). Each model gets a final-norm gain that is far from all ones and
partly negative, as trained models have (SmolLM2-135M's runs from -2.1 to 3.3).
"""

from __future__ import annotations

import pytest
import torch

from evals.features.lens import final_norm, load_unembedding, logit_lens

D = 32


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from workbench.models import offline_path

    return AutoTokenizer.from_pretrained(str(offline_path("minilm-l6")))


def _llama(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=D, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2))
    return hf, hf.model.norm


def _gemma(vocab: int):
    from transformers import GemmaConfig, GemmaForCausalLM

    hf = GemmaForCausalLM(GemmaConfig(vocab_size=vocab, hidden_size=D, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8))
    return hf, hf.model.norm


def _gpt2(vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=D, n_layer=1, n_head=4, n_positions=64,
                                    bos_token_id=0, eos_token_id=0))
    return hf, hf.transformer.ln_f


def _bridged(build, tok, seed: int):
    """A tiny model whose final norm has a random gain (negatives included) and, where it has one,
    a random bias; returns the bridged model and the model's own final norm and output layer."""
    from workbench.models import from_hf_model

    torch.manual_seed(seed)
    hf, norm = build(len(tok))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(D, generator=g) * 1.5 + 0.5)
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(torch.randn(D, generator=g))
    hf.eval()
    return from_hf_model(hf, tok, model_id=type(hf).__name__), norm, hf.get_output_embeddings()


@torch.no_grad()
def _reference(norm, head, d: torch.Tensor) -> torch.Tensor:
    """What the model writes for a residual along each row of `d`, less what it writes for nothing."""
    return head(norm(d)) - head(norm(torch.zeros_like(d)))


@pytest.mark.parametrize("build", [_llama, _gemma, _gpt2], ids=["rmsnorm", "gemma-1+w", "layernorm"])
def test_lens_is_the_models_own_readout_of_a_direction(build, tok):
    lm, norm, head = _bridged(build, tok, seed=3)
    w_u = load_unembedding(lm)
    assert w_u is not None and w_u.shape == (D, len(tok))
    d = torch.randn(12, D, generator=torch.Generator().manual_seed(4))
    ref = _reference(norm, head, d)
    ours = d @ w_u
    # one positive factor per direction, the same for every token (least squares, then checked)
    scale = (ours * ref).sum(1, keepdim=True) / (ours * ours).sum(1, keepdim=True)
    assert (scale > 0).all()
    torch.testing.assert_close(ours * scale, ref, rtol=1e-4, atol=1e-5)
    n = 10
    lens = logit_lens(d, w_u, n, chunk=5)
    assert torch.equal(lens["logit_top_ids"], torch.topk(ref, n, dim=1).indices)
    assert torch.equal(lens["logit_bot_ids"], torch.topk(ref, n, dim=1, largest=False).indices)
    torch.testing.assert_close(lens["logit_top_vals"] * scale, torch.topk(ref, n, dim=1).values, rtol=1e-4, atol=1e-5)


def test_final_norm_reads_the_bridge(tok):
    lm, norm, _ = _bridged(_llama, tok, seed=5)
    fn = final_norm(lm)
    assert fn is not None and not fn.centres and fn.kind == "rmsnorm"
    assert torch.equal(fn.gain, norm.weight.detach().float())
    lm, norm, _ = _bridged(_gemma, tok, seed=5)
    fn = final_norm(lm)
    assert fn.kind == "rmsnorm (1 + w)" and torch.equal(fn.gain, 1 + norm.weight.detach().float())
    lm, norm, _ = _bridged(_gpt2, tok, seed=5)
    fn = final_norm(lm)
    assert fn.kind == "layernorm" and fn.centres and torch.equal(fn.gain, norm.weight.detach().float())


def test_a_stand_in_without_a_model_keeps_its_matrix():
    """Benchmarks hand a bare `unembed` matrix with no model behind it: it is used as given."""
    from types import SimpleNamespace

    w = torch.randn(8, 50)
    assert torch.equal(load_unembedding(SimpleNamespace(unembed=w)), w)
