"""The loading floor's own promises: cached generation is right, devices and offline files resolve or say why."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from workbench import WorkbenchError, package_file, resolve_device  # noqa: E402


def test_cached_greedy_generation_equals_uncached() -> None:
    """TransformerLens 4.3 + transformers 5.2x left the KV cache empty (the prompt was ignored after step 1)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from workbench.models import from_hf_model, offline_path

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(offline_path("minilm-l6")))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    lm = from_hf_model(LlamaForCausalLM(cfg), tokenizer=tok, model_id="tiny-llama")
    prompt = torch.randint(1000, 2000, (2, 5), generator=torch.Generator().manual_seed(1))

    def gen(cached: bool) -> torch.Tensor:
        return lm.bridge.generate(prompt, max_new_tokens=6, do_sample=False, verbose=False, stop_at_eos=False,
                                  use_past_kv_cache=cached)

    # reference: greedy decoding by hand, full forward pass each step
    ref = prompt
    for _ in range(6):
        with torch.no_grad():
            ref = torch.cat([ref, lm.bridge(ref)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(gen(False), ref)
    assert torch.equal(gen(True), ref)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(WorkbenchError, match=r"unknown device 'gpu0'; valid: auto, cpu, cuda, cuda:N"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(WorkbenchError, match="no CUDA device; use --device cpu"):
            resolve_device("cuda:0")


def test_package_file_finds_an_installed_package_and_names_the_missing_one() -> None:
    path = package_file("torch", "__init__.py", "torch's init")
    assert path.is_file()
    with pytest.raises(WorkbenchError, match=r"the offline thing needs the PyPI package 'no-such-pkg-x'; install it with `pip install --no-deps no-such-pkg-x`"):
        package_file("no_such_pkg_x", "data.json", "the offline thing")
