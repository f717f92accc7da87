"""The harvest loop: one forward pass per batch of contexts, every requested hook point at once.

The forward pass stops after the deepest hooked block (`workbench.hooks.capture`), so harvesting layer 8
of a 30-layer model costs 9 layers, not 30. Resuming relies on determinism: the context stream
is a pure function of the config, shards end on batch boundaries, and the manifest lists
finished shards only, so a rerun skips the contexts already stored and recomputes the very
same batches.
"""

from __future__ import annotations

import itertools
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from harvesting.cache import DTYPES, MANIFEST, CacheWriter, read_manifest
from harvesting.corpus import Context, open_documents, pack_contexts
from workbench.config import config_to_dict
from workbench.device import resolve_device
from workbench.errors import WorkbenchError
from workbench.hooks import capture
from workbench.models import LoadedModel, load_model

log = logging.getLogger(__name__)

TEXT_ROWS = ("token_ids", "doc_ids", "context_ids", "positions")
VISION_ROWS = ("image_ids", "patch_ids", "context_ids")


@dataclass
class HarvestConfig:
    """What to harvest and where to put it. Every field is also a `sae harvest` flag."""

    model: str = field(default="smollm2-135m", metadata={"help": "offline alias (smollm2-135m, minilm-l6), hub id, local directory or .gguf file"})
    corpus: str = field(default="wiki-vital", metadata={"help": "offline alias (wiki-vital), hub dataset id, or local text/json/jsonl/parquet/csv file or folder (an image folder for vision models)"})
    hooks: tuple[str, ...] = field(default=("blocks.8.hook_resid_post",), metadata={"help": "hook points, all captured in one forward pass"})
    tokens: int = field(default=1_000_000, metadata={"help": "token budget: rows to store (vision: CLS + patch rows)"})
    out: str = field(default="cache/acts", metadata={"help": "cache directory (created; an unfinished one is resumed)"})
    context_length: int = field(default=128, metadata={"help": "tokens per context including the model's BOS/CLS/SEP"})
    batch_size: int = field(default=16, metadata={"help": "contexts (or images) per forward pass"})
    dtype: Literal["float32", "float16", "bfloat16"] = field(default="float32", metadata={"help": "dtype of the stored activations"})
    shard_tokens: int = field(default=65_536, metadata={"help": "rows per shard file (shards end on a forward-pass boundary)"})
    seed: int = field(default=0, metadata={"help": "seed of the document order"})
    split: str = field(default="train", metadata={"help": "dataset split (hub datasets)"})
    text_field: str | None = field(default=None, metadata={"help": "dataset field holding the text (default text) or image (default image)"})
    subset: str | None = field(default=None, metadata={"help": "dataset configuration name (hub datasets)"})
    streaming: bool | None = field(default=None, metadata={"help": "stream the corpus (default: hub datasets stream, local files load whole)"})
    revision: str | None = field(default=None, metadata={"help": "model revision (hub models)"})
    model_dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={"help": "dtype the model runs in"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:1, ... (auto: cuda if present)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def identity(self) -> dict[str, Any]:
        """The fields that decide the cache's bytes (not where it lives or how it is displayed)."""
        d = config_to_dict(self)
        for k in ("out", "device", "progress"):
            d.pop(k)
        return d


def _check_config(cfg: HarvestConfig) -> None:
    if not cfg.hooks:
        raise WorkbenchError("give at least one hook point (--hooks blocks.8.hook_resid_post ...)")
    if len(set(cfg.hooks)) != len(cfg.hooks):
        raise WorkbenchError(f"hook points repeat: {list(cfg.hooks)}")
    for name in ("tokens", "context_length", "batch_size", "shard_tokens", "seed"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool):  # argparse turns `--flag=--` into a list
            raise WorkbenchError(f"--{name.replace('_', '-')} needs an integer; got {v!r}")
        if v < 1 and name != "seed":
            raise WorkbenchError(f"--{name.replace('_', '-')} must be at least 1; got {v}")
    if cfg.dtype not in DTYPES:
        raise WorkbenchError(f"unknown dtype {cfg.dtype!r}; valid choices: {', '.join(DTYPES)}")


def _check_disk(out: Path, cfg: HarvestConfig, d_models: dict[str, int], done_rows: int) -> None:
    """Refuse to start a harvest that cannot fit, instead of failing hours in."""
    per_row = sum(d * DTYPES[cfg.dtype].itemsize for d in d_models.values()) + 4 * 8
    need = max(cfg.tokens - done_rows, 0) * per_row
    probe = out if out.exists() else next(p for p in out.parents if p.exists())
    free = shutil.disk_usage(probe).free
    if need > free:
        raise WorkbenchError(
            f"this harvest needs about {need / 2**30:.2f} GiB for {cfg.tokens:,} tokens x {len(d_models)} hook(s) "
            f"in {cfg.dtype}, but only {free / 2**30:.2f} GiB is free under {str(probe)!r}; lower --tokens, "
            f"use --dtype float16/bfloat16, or free space"
        )


def harvest(cfg: HarvestConfig, model: LoadedModel | None = None) -> Path:
    """Run (or resume, or confirm finished) the harvest `cfg` describes; returns the cache directory."""
    _check_config(cfg)
    out = Path(cfg.out)
    identity = cfg.identity()
    if (out / MANIFEST).exists():
        m = read_manifest(out)
        # A cache written before a config field existed holds that field's default.
        stored = m.get("config") or {}
        if {**HarvestConfig().identity(), **stored} == identity:
            identity = stored
            if m["status"] == "complete":
                log.info("%s is already complete (%s tokens); nothing to do", out, f"{m['totals']['rows']:,}")
                return out
    device = resolve_device(cfg.device)
    lm = model or load_model(cfg.model, device=device, dtype=DTYPES[cfg.model_dtype], revision=cfg.revision)
    lm.check_hooks(list(cfg.hooks))
    d_models = {h: lm.d_model for h in cfg.hooks}
    header = {
        "config": identity,
        "model": {"id": lm.model_id, "revision": lm.revision, "modality": lm.modality, "n_layers": lm.n_layers,
                  "d_model": lm.d_model, "source": lm.source},
        "corpus": {"id": cfg.corpus, "split": cfg.split, "subset": cfg.subset, "field": cfg.text_field, "seed": cfg.seed},
        "context_length": cfg.context_length,
        "tokenizer": _tokenizer_info(lm),
    }
    rows = VISION_ROWS if lm.modality == "vision" else TEXT_ROWS
    writer = CacheWriter(out, d_models, cfg.dtype, cfg.shard_tokens, header, rows)
    if writer.complete:
        return out
    _check_disk(out, cfg, d_models, writer.resumed_rows)
    if lm.modality == "vision":
        batches = _image_batches(lm, cfg, writer.resumed_contexts)
    else:
        batches = _text_batches(lm, cfg, writer.resumed_contexts)
    done = writer.resumed_rows
    ctx_index = writer.resumed_contexts
    bar = tqdm(total=cfg.tokens, initial=min(done, cfg.tokens), unit="tok", unit_scale=True,
               desc=f"harvest {lm.model_id}", disable=not cfg.progress, smoothing=0.1)
    try:
        for inputs, keep, ids in batches:
            if done >= cfg.tokens:
                break
            if keep is not None:  # text: trim the last batch before running it
                n_ctx = _contexts_needed(keep, cfg.tokens - done)
                inputs, keep, ids = inputs[:n_ctx], keep[:n_ctx], {k: v[:n_ctx] for k, v in ids.items()}
            acts = _forward(lm, inputs.to(device), list(cfg.hooks))
            if keep is None:  # vision: every CLS/patch row is kept; the model says how many per image
                b, t = next(iter(acts.values())).shape[:2]
                keep = torch.ones(b, t, dtype=torch.bool)
                ids = {"image_ids": ids["image_ids"].unsqueeze(1).expand(b, t),
                       "patch_ids": torch.arange(t).unsqueeze(0).expand(b, t)}
                n_ctx = _contexts_needed(keep, cfg.tokens - done)
                acts = {h: a[:n_ctx] for h, a in acts.items()}
                keep, ids = keep[:n_ctx], {k: v[:n_ctx] for k, v in ids.items()}
            mask = keep.to(device)
            b, t = keep.shape
            ids["context_ids"] = (torch.arange(ctx_index, ctx_index + b).unsqueeze(1).expand(b, t))
            if "positions" in rows:
                ids["positions"] = torch.arange(t).unsqueeze(0).expand(b, t)
            kept = {h: a[mask] for h, a in acts.items()}
            row_ids = {k: v[keep].to(torch.int64 if k == "context_ids" else torch.int32) for k, v in ids.items()}
            writer.add(kept, row_ids, contexts=b)
            n = int(keep.sum())
            done += n
            ctx_index += b
            bar.update(min(n, cfg.tokens - bar.n))
    finally:
        bar.close()
    writer.finish()
    if done < cfg.tokens:
        log.warning("the corpus ran out after %s tokens (budget %s)", f"{done:,}", f"{cfg.tokens:,}")
    return out


def _contexts_needed(keep: torch.Tensor, remaining: int) -> int:
    """How many leading contexts of a batch fill the rest of the budget (the cache never holds a batch more)."""
    per_ctx = keep.sum(1).cumsum(0)
    return min(int(torch.searchsorted(per_ctx, torch.tensor(remaining), right=False)) + 1, keep.shape[0])


def _tokenizer_info(lm: LoadedModel) -> dict[str, Any] | None:
    tok = lm.tokenizer
    if tok is None:
        return None
    return {"name": getattr(tok, "name_or_path", ""), "vocab_size": len(tok), "prefix_ids": list(lm.prefix_ids),
            "suffix_ids": list(lm.suffix_ids), "separator_id": lm.separator_id, "pad_id": lm.pad_id}


def _forward(lm: LoadedModel, inputs: torch.Tensor, hooks: list[str]) -> dict[str, torch.Tensor]:
    return capture(lm, inputs, hooks, stop=True)


def _text_batches(lm: LoadedModel, cfg: HarvestConfig, skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
    docs = open_documents(cfg.corpus, split=cfg.split, field=cfg.text_field, seed=cfg.seed, revision=None,
                          subset=cfg.subset, modality="text", streaming=cfg.streaming)
    contexts: Iterator[Context] = pack_contexts(docs, lm.tokenizer, cfg.context_length, lm.prefix_ids,
                                                lm.suffix_ids, lm.separator_id, lm.pad_id)
    contexts = itertools.islice(contexts, skip, None)
    while True:
        chunk = list(itertools.islice(contexts, cfg.batch_size))
        if not chunk:
            return
        ids = torch.stack([c.input_ids for c in chunk])
        yield ids, torch.stack([c.keep for c in chunk]), {"token_ids": ids, "doc_ids": torch.stack([c.doc_ids for c in chunk])}


def _image_batches(lm: LoadedModel, cfg: HarvestConfig, skip: int) -> Iterator[tuple[torch.Tensor, None, dict]]:
    """Preprocessed images; the rows per image (CLS [+ distillation] + patches) come from the forward."""
    if lm.image_processor is None:
        raise WorkbenchError(f"{lm.model_id} has no image processor; cannot preprocess images for it")
    docs = open_documents(cfg.corpus, split=cfg.split, field=cfg.text_field, seed=cfg.seed, subset=cfg.subset,
                          modality="vision", streaming=cfg.streaming)
    docs = itertools.islice(docs, skip, None)
    while True:
        chunk = list(itertools.islice(docs, cfg.batch_size))
        if not chunk:
            return
        images = [d.image.convert("RGB") if hasattr(d.image, "convert") else d.image for d in chunk]
        px = lm.image_processor(images=images, return_tensors="pt")["pixel_values"].to(DTYPES[cfg.model_dtype])
        yield px, None, {"image_ids": torch.tensor([d.index for d in chunk])}
