"""A tiny real harvest + SAE shared by the feature, browser, geometry and notebook tests.

A 2-layer Llama built from a config, the offline MiniLM WordPiece tokenizer with `<script>` added
as one token, a corpus of real wiki-vital text plus documents carrying script payloads, harvested
by the real `harvest` into several small shards; the SAE is a random TopK SAE saved in the real
format (dashboards need no trained SAE to be checked against brute force).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HOOK = "blocks.1.hook_resid_post"
PAYLOAD = "<script>document.body.style.background='rgb(255,0,0)';document.title='pwned'</script>"
_CACHE: dict[str, dict[str, Path]] = {}


def tiny_for(tmp_path_factory) -> dict[str, Path]:
    """The session's tiny setup, under pytest's base temp directory (shared by every module)."""
    root = tmp_path_factory.getbasetemp() / "inspect_tiny"
    root.mkdir(exist_ok=True)
    return tiny_setup(root)


def tiny_setup(root: Path, num_features: int = 96, k: int = 8) -> dict[str, Path]:
    """Build (once per session) model dir, cache and SAE under `root`; returns their paths."""
    key = f"{num_features}-{k}"
    if key in _CACHE:
        return _CACHE[key]
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from harvesting import HarvestConfig, harvest
    from harvesting.corpus import wiki_vital_records
    from workbench.models import offline_path
    from saes import SAEConfig, build_sae, save_sae

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(offline_path("minilm-l6")))
    tok.add_tokens(["<script>"], special_tokens=False)
    tok.bos_token, tok.eos_token = "[CLS]", "[SEP]"
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model_dir = root / "model"
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    docs = [r["text"] for r in wiki_vital_records()[:40]]
    docs[3] = f"The page said {PAYLOAD} and then <img src=x onerror=\"document.title='pwned'\"> twice {PAYLOAD}."
    corpus = root / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    cache = root / "acts"
    harvest(HarvestConfig(model=str(model_dir), corpus=str(corpus), hooks=(HOOK,), tokens=3000, out=str(cache),
                          context_length=32, batch_size=8, shard_tokens=400, device="cpu", progress=False))
    sae = build_sae(SAEConfig(architecture="topk", d_in=32, num_features=num_features, k=k, hook=HOOK,
                              model_id=str(model_dir)), generator=torch.Generator().manual_seed(1))
    from harvesting import CacheReader

    r = CacheReader(cache)
    x = torch.cat([r.load_shard(i)[HOOK] for i in range(len(r.shards))]).float()
    with torch.no_grad():  # centred and scaled like a trained SAE's input, so most features fire
        sae.b_dec.copy_(x.mean(0))
        sae.enc_weight.mul_(1.0 / x.std(0).mean())
        sae.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
        # feature 0 reads the `<script>` token, so the browser tests have a page and an index row showing it
        tokens = torch.cat([r.load_shard(i, [])["token_ids"] for i in range(len(r.shards))])
        hit = tokens == tok.convert_tokens_to_ids("<script>")
        assert hit.sum() >= 2, "the corpus should hold the <script> payload"
        u = x[hit].mean(0) - x.mean(0)
        sae.enc_weight[0] = 4 * u / u.norm() / x.std(0).mean()
    sae_dir = root / "sae"
    save_sae(sae, sae_dir)
    _CACHE[key] = {"model": model_dir, "cache": cache, "sae": sae_dir, "root": root}
    return _CACHE[key]
