"""Tiny real models (random weights, built from configs, saved as ordinary model directories) and corpora.

They load through the same path a user's local model directory does, so the tests exercise
the real loading code; the tokenizer is the real all-MiniLM-L6-v2 WordPiece tokenizer from the
offline package.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _minilm_tokenizer():
    from transformers import AutoTokenizer

    from workbench.models import offline_path

    return AutoTokenizer.from_pretrained(str(offline_path("minilm-l6")))


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory) -> Path:
    """A 3-layer Llama with a BOS token (the tokenizer's [CLS], re-declared as BOS)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = _minilm_tokenizer()
    tok.bos_token = "[CLS]"
    tok.eos_token = "[SEP]"
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    d = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_masked_dir(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(1)
    tok = _minilm_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128)
    d = tmp_path_factory.mktemp("tiny_bert")
    BertForMaskedLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _tiny_vision_dir(tmp_path_factory, name: str, seed: int, model_cls, cfg_cls, processor) -> Path:
    """A 3-layer, 32-wide vision tower on 32x32 images in 8x8 patches (CLS + 16 patches)."""
    torch.manual_seed(seed)
    cfg = cfg_cls(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                  image_size=32, patch_size=8)
    d = tmp_path_factory.mktemp(name)
    model_cls(cfg).save_pretrained(d)
    processor.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    return _tiny_vision_dir(tmp_path_factory, "tiny_vit", 2, ViTModel, ViTConfig,
                            ViTImageProcessor(size={"height": 32, "width": 32}))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    return _tiny_vision_dir(tmp_path_factory, "tiny_clip", 3, CLIPVisionModel, CLIPVisionConfig,
                            CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}))


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """Real photographs shipped with scikit-image, as an image folder `datasets` reads."""
    import skimage.data

    src = Path(skimage.data.__file__).parent
    d = tmp_path_factory.mktemp("images")
    names = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "horse.png", "coins.png"]
    for n in names:
        shutil.copy(src / n, d / n)
    return d


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    """A local JSONL corpus drawn from the offline wiki-vital summaries (real text)."""
    from harvesting.corpus import wiki_vital_records

    recs = wiki_vital_records()[:300]
    d = tmp_path_factory.mktemp("corpus")
    p = d / "docs.jsonl"
    p.write_text("".join(json.dumps({"text": r["text"], "topic": r["topic"]}) + "\n" for r in recs))
    return p


def synthetic_cache(path: Path, *, adds: int, rows_per_add: int, contexts_per_add: int, context_length: int,
                    doc_rows: int, shard_tokens: int, d: int = 4) -> Path:
    """A cache of random rows at one hook "h" written by the real writer: `adds` batches of
    `rows_per_add` rows, documents of `doc_rows` rows, for tests that damage or edit a real cache."""
    from harvesting import CacheWriter

    w = CacheWriter(path, {"h": d}, "float32", shard_tokens=shard_tokens,
                    header={"model": {"id": "synthetic"}, "context_length": context_length})
    g = torch.Generator().manual_seed(0)
    for i in range(adds):
        ids = torch.arange(i * rows_per_add, (i + 1) * rows_per_add)
        w.add({"h": torch.randn(rows_per_add, d, generator=g)},
              {"token_ids": ids.to(torch.int32), "doc_ids": ids.to(torch.int32) // doc_rows,
               "context_ids": ids // context_length, "positions": (ids % context_length).to(torch.int32)},
              contexts=contexts_per_add)
    w.finish()
    return path

