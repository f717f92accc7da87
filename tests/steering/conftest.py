"""A tiny random Llama (real tokenizer, real TransformerLens bridge) and a tiny SAE at one of its hooks."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HOOK = "blocks.1.hook_resid_post"


def _tiny_hf():
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from workbench.models import offline_path

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(offline_path("minilm-l6")))
    tok.bos_token = "[CLS]"
    tok.eos_token = "[SEP]"
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg), tok


@pytest.fixture(scope="session")
def tiny_lm():
    from workbench.models import from_hf_model

    torch.set_num_threads(1)
    return from_hf_model(*_tiny_hf(), model_id="tiny-llama")


@pytest.fixture(scope="session")
def tiny_sae():
    """A TopK SAE with random unit decoder rows whose encoder fires on the tiny model's activations."""
    from saes import SAEConfig, build_sae

    g = torch.Generator().manual_seed(1)
    sae = build_sae(SAEConfig("topk", d_in=32, num_features=64, k=6, hook=HOOK, model_id="tiny-llama"), generator=g)
    with torch.no_grad():
        sae.b_enc.fill_(0.5)
    return sae.eval()


@pytest.fixture
def prompts():
    return ["the cat sat on the mat", "a dog", "what is the capital of france and why", "hello there"]


@pytest.fixture(scope="session")
def saved_tiny(tmp_path_factory):
    """The tiny model saved as a model directory and SAEs naming it: one that fits, and misfits."""
    from saes import SAEConfig, build_sae, save_sae

    root = tmp_path_factory.mktemp("steer_cli")
    model_dir = root / "model"
    hf, tok = _tiny_hf()
    hf.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    good = root / "sae_good"
    save_sae(build_sae(SAEConfig("topk", d_in=32, num_features=64, k=6, hook=HOOK, model_id=str(model_dir))), good)
    bad_hook = root / "sae_bad_hook"
    save_sae(build_sae(SAEConfig("topk", d_in=32, num_features=64, k=6, hook="blocks.9.hook_resid_post",
                                 model_id=str(model_dir))), bad_hook)
    bad_width = root / "sae_bad_width"
    save_sae(build_sae(SAEConfig("topk", d_in=24, num_features=64, k=6, hook=HOOK, model_id=str(model_dir))), bad_width)
    return {"model": model_dir, "good": good, "bad_hook": bad_hook, "bad_width": bad_width, "root": root}
