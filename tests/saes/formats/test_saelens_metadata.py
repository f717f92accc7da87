"""The metadata of our SAELens export: every field a SAELens 6 save writes, with our SAE's provenance.

The reference is SAELens 6.54 itself, in its own terms: a training run sets the metadata fields
listed in `LanguageModelSAETrainingRunner._set_sae_metadata` (plus `SAEMetadata`'s two version
fields), and `ActivationsStore.from_sae` refuses an SAE whose metadata lacks hook_name,
context_size or prepend_bos ("prepend_bos is required"), then reads the rest from there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peers import read_dir, saelens_cfg, write_dir, random_weights

from saes import SAEConfig, build_sae
from saes.formats import export_saelens, load_any
from workbench.errors import WorkbenchError

W = "sae_weights.safetensors"
D, F = 12, 40

# sae_lens/llm_sae_training_runner.py `_set_sae_metadata` (6.54), SAEMetadata's version fields, and the two
# `TrainingSAEConfig._metadata_with_training_info` adds when a trained SAE is saved (`save_inference_model`).
SAELENS6_METADATA = {
    "sae_lens_version", "sae_lens_training_version", "dataset_path", "hook_name", "model_name", "model_class_name",
    "hook_head_index", "context_size", "seqpos_slice", "model_from_pretrained_kwargs", "prepend_bos",
    "exclude_special_tokens", "sequence_separator_token", "disable_concat_sequences",
    "training_architecture", "training_architecture_details",
}
# sae_lens/training/activations_store.py `ActivationsStore.from_sae`: raises ValueError(f"{key} is required").
FROM_SAE_REQUIRED = ("hook_name", "context_size", "prepend_bos")


def from_sae_settings(cfg: dict) -> dict:
    """What SAELens's `ActivationsStore.from_sae` takes from a cfg.json (its own checks, its own names)."""
    meta = cfg["metadata"]
    for key in FROM_SAE_REQUIRED:
        if meta.get(key) is None:
            raise ValueError(f"{key} is required")
    return {"d_in": cfg["d_in"], "hook_name": meta["hook_name"], "hook_head_index": meta.get("hook_head_index"),
            "context_size": meta["context_size"], "prepend_bos": meta["prepend_bos"],
            "dataset": meta.get("dataset_path"), "seqpos_slice": tuple(meta.get("seqpos_slice") or (None,))}


def write_manifest(d: Path, *, prefix: list[int], separator: int = 2, context_length: int = 64) -> Path:
    """A harvest manifest as harvesting writes it (only the fields provenance reads matter here)."""
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({
        "format": "sae-workbench-activation-cache", "format_version": 1, "context_length": context_length,
        "corpus": {"id": "wiki-vital", "split": "train"}, "model": {"id": "tiny-model", "source": "tiny"},
        "hooks": {"blocks.2.hook_resid_post": {"d_model": D, "dtype": "float32"}},
        "tokenizer": {"prefix_ids": prefix, "suffix_ids": [], "separator_id": separator, "pad_id": separator},
    }))
    return d


def sae_trained_on(cache: Path | None, seed: int = 0):
    train = {"cache": str(cache)} if cache is not None else {}
    return build_sae(SAEConfig(architecture="topk", d_in=D, num_features=F, k=5, hook="blocks.2.hook_resid_post",
                               model_id="tiny-model", train=train), generator=torch.Generator().manual_seed(seed))


def test_export_writes_every_saelens6_metadata_field_from_the_training_cache(tmp_path):
    cache = write_manifest(tmp_path / "acts", prefix=[1], separator=2, context_length=64)
    cfg, _ = read_dir(export_saelens(sae_trained_on(cache), tmp_path / "out"), W)
    meta = cfg["metadata"]
    assert SAELENS6_METADATA <= set(meta), sorted(SAELENS6_METADATA - set(meta))
    got = from_sae_settings(cfg)
    assert got == {"d_in": D, "hook_name": "blocks.2.hook_resid_post", "hook_head_index": None, "context_size": 64,
                   "prepend_bos": True, "dataset": "wiki-vital", "seqpos_slice": (None,)}
    assert meta["model_name"] == "tiny-model"
    # the training class's architecture, and the training-only settings (SAELens: config fields the
    # inference SAE does not need)
    assert meta["training_architecture"] == "topk"
    assert isinstance(meta["training_architecture_details"], dict)
    assert not {"d_in", "k", "hook", "num_features"} & set(meta["training_architecture_details"])
    # BOS is never stored, so never trained on; packed documents are separated by the stored EOS.
    assert meta["exclude_special_tokens"] == [1]
    assert meta["sequence_separator_token"] == 2 and meta["disable_concat_sequences"] is False


def test_a_model_without_bos_exports_prepend_bos_false(tmp_path):
    cache = write_manifest(tmp_path / "acts", prefix=[], context_length=32)
    cfg, _ = read_dir(export_saelens(sae_trained_on(None), tmp_path / "out", cache=cache), W)
    assert from_sae_settings(cfg)["prepend_bos"] is False and cfg["metadata"]["context_size"] == 32
    assert cfg["metadata"]["exclude_special_tokens"] is False


def test_without_a_cache_every_field_is_written_and_unknowns_are_null(tmp_path):
    cfg, _ = read_dir(export_saelens(sae_trained_on(tmp_path / "gone"), tmp_path / "out"), W)
    assert SAELENS6_METADATA <= set(cfg["metadata"])
    with pytest.raises(ValueError, match="context_size is required"):
        from_sae_settings(cfg)
    with pytest.raises(WorkbenchError, match="is not an activation cache"):
        export_saelens(sae_trained_on(None), tmp_path / "o2", cache=tmp_path / "gone")


def test_an_imported_saelens_sae_keeps_its_metadata_on_export(tmp_path):
    src = saelens_cfg("topk", D, F, k=5)
    src["metadata"].update({"context_size": 1024, "prepend_bos": False, "dataset_path": "owner/data",
                            "model_class_name": "HookedTransformer"})
    sae = load_any(write_dir(tmp_path / "src", src, random_weights(D, F, 0), W))
    cfg, _ = read_dir(export_saelens(sae, tmp_path / "out"), W)
    assert from_sae_settings(cfg)["context_size"] == 1024 and cfg["metadata"]["prepend_bos"] is False
    assert cfg["metadata"]["dataset_path"] == "owner/data"
