"""A tiny random Llama saved as a model directory, a real tiny harvest of it on wiki-vital, and SAEs for it.

The model loads through the same path a user's local model directory does; the cache is written
by the real harvest loop, so the held-out contexts the evaluation rebuilds are the harvest's own.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HOOK = "blocks.1.hook_resid_post"
D_MODEL = 48


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny shapes: one thread is faster, and far faster when other jobs share the cores."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 3-layer Llama (d_model 48) with a BOS token: the MiniLM WordPiece tokenizer, [CLS] as BOS."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from workbench.models import offline_path

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(offline_path("minilm-l6")))
    tok.bos_token, tok.eos_token = "[CLS]", "[SEP]"
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=D_MODEL, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    d = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    from workbench.models import load_model

    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def tiny_cache(tiny_model_dir, tiny_lm, tmp_path_factory) -> Path:
    """About 4000 tokens of wiki-vital at blocks.1 and blocks.2, contexts of 32, 10% held out by the tests."""
    from harvesting import HarvestConfig, harvest

    out = tmp_path_factory.mktemp("cache") / "acts"
    cfg = HarvestConfig(model=str(tiny_model_dir), corpus="wiki-vital", hooks=(HOOK, "blocks.2.hook_resid_post"),
                        tokens=4000, out=str(out), context_length=32, batch_size=16, shard_tokens=1500,
                        progress=False, device="cpu")
    return harvest(cfg, model=tiny_lm)


def make_sae(num_features: int = 96, k: int = 8, hook: str = HOOK, seed: int = 0, d_in: int = D_MODEL,
             heldout_fraction: float = 0.1):
    from saes import SAEConfig, build_sae

    cfg = SAEConfig(architecture="topk", d_in=d_in, num_features=num_features, k=k, hook=hook,
                    train={"heldout_fraction": heldout_fraction})
    return build_sae(cfg, generator=torch.Generator().manual_seed(seed)).eval()


def identity_sae(hook: str = HOOK, d: int = D_MODEL):
    """A TopK SAE that reconstructs exactly: features [x, -x] through ReLU, decoder [I; -I], k = d."""
    sae = make_sae(num_features=2 * d, k=d, hook=hook, d_in=d)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.enc_weight.copy_(torch.cat([eye, -eye]))
        sae.W_dec.copy_(torch.cat([eye, -eye]))
    return sae


def zero_sae(hook: str = HOOK):
    """An SAE whose reconstruction is exactly zero (decoder and its bias zero)."""
    sae = make_sae(hook=hook)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.zero_()
    return sae
