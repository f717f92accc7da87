"""The harvest loop: one forward pass per batch of contexts, every requested hook point at once.

The forward pass stops after the deepest hooked block (`workbench.hooks.capture`), so harvesting layer 8
of a 30-layer model costs 9 layers, not 30. Resuming relies on determinism: the context stream
is a pure function of the config, shards end on batch boundaries, and the manifest lists
finished shards only, so a rerun skips the shards already stored and recomputes the very
same batches. `harvesting.plan` decides which batches make which shard, which is also what lets
several processes (torchrun) each write their share of one cache.
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

from harvesting.cache import DTYPES, MANIFEST, CacheWriter, read_manifest, to_stored
from harvesting.corpus import Context, open_documents, pack_contexts
from harvesting.plan import Batch, ShardEnd, owner, plan_shards
from workbench.config import config_to_dict
from workbench.device import resolve_device
from workbench.distributed import DistContext, is_main_process, setup_distributed
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
    corpus: str = field(default="wiki-vital", metadata={"help": "offline alias (wiki-vital, debian-text), hub dataset id, or local text/json/jsonl/parquet/csv file or folder (an image folder for vision models)"})
    hooks: tuple[str, ...] = field(default=("blocks.8.hook_resid_post",), metadata={"help": "hook points, all captured in one forward pass"})
    tokens: int = field(default=1_000_000, metadata={"help": "token budget: rows to store (vision: CLS + patch rows)"})
    out: str = field(default="cache/acts", metadata={"help": "cache directory (created; an unfinished one is resumed)"})
    context_length: int = field(default=128, metadata={"help": "tokens per context including the model's BOS/CLS/SEP"})
    batch_size: int = field(default=16, metadata={"help": "contexts (or images) per forward pass"})
    dtype: Literal["float32", "float16", "bfloat16"] = field(default="float32", metadata={"help": "dtype of the stored activations: float16 and bfloat16 halve the disk and every epoch's reads (the trainer and evals upcast them to float32 where they compute)"})
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
    """Run (or resume, or confirm finished) the harvest `cfg` describes; returns the cache directory.

    Under `torchrun` (or inside an initialised process group) every rank calls this: each runs
    the shards `harvesting.plan` gives it, rank 0 writes the one manifest, and all return once
    the cache is complete.
    """
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
                if is_main_process():
                    log.info("%s is already complete (%s tokens); nothing to do", out, f"{m['totals']['rows']:,}")
                return out
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist = setup_distributed(device)
    try:
        return _harvest(cfg, model, out, identity, device, dist)
    finally:
        dist.close()


def _harvest(cfg: HarvestConfig, model: LoadedModel | None, out: Path, identity: dict[str, Any],
             device: torch.device, dist: DistContext) -> Path:
    def load() -> LoadedModel:
        lm = model or load_model(cfg.model, device=device, dtype=DTYPES[cfg.model_dtype], revision=cfg.revision)
        lm.check_hooks(list(cfg.hooks))
        return lm

    # Each step that may fail runs under `together`: a failure on one rank is raised on every rank.
    lm = dist.together(load)
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
    # Every rank checks the directory (reads only); then rank 0 alone creates or tidies it.
    writer = dist.together(lambda: CacheWriter(out, d_models, cfg.dtype, cfg.shard_tokens, header, rows, prepare=False))
    if writer.complete:
        return out
    dist.together(lambda: writer.prepare() if dist.is_main else None)
    finished = writer.finished()
    done = sum(s["rows"][1] - s["rows"][0] for s in finished.values())
    dist.together(lambda: _check_disk(out, cfg, d_models, done))
    bar = tqdm(total=cfg.tokens, initial=min(done, cfg.tokens), unit="tok", unit_scale=True, smoothing=0.1,
               desc=f"harvest {lm.model_id}" + (f" ({dist.world_size} processes)" if dist.enabled else ""),
               disable=not (cfg.progress and dist.is_main))
    try:
        shards, planned_rows = dist.together(lambda: _run_plan(lm, cfg, device, writer, finished, dist, bar))
    finally:
        bar.close()
    dist.together(lambda: writer.finish(shards) if dist.is_main else None)
    if planned_rows < cfg.tokens and dist.is_main:
        log.warning("the corpus ran out after %s tokens (budget %s)", f"{planned_rows:,}", f"{cfg.tokens:,}")
    return out


def _run_plan(lm: LoadedModel, cfg: HarvestConfig, device: torch.device, writer: CacheWriter,
              finished: dict[int, dict[str, Any]], dist: DistContext, bar: tqdm) -> tuple[int, int]:
    """Run this rank's unfinished shards of the plan, recording each; returns (shards, rows) of the whole plan."""
    batches = _image_batches(lm, cfg, device) if lm.modality == "vision" else _text_batches(lm, cfg)
    acts: dict[str, list[torch.Tensor]] = {}
    ids: dict[str, list[torch.Tensor]] = {}
    shards = rows = written = 0
    for step in plan_shards(batches, cfg.tokens, cfg.shard_tokens, positions="positions" in writer.row_fields):
        if isinstance(step, ShardEnd):
            shards, rows = step.index + 1, step.rows[1]
            if step.index in finished:
                _check_finished(finished[step.index], step, writer.path)
            elif owner(step.index, dist.world_size) == dist.rank:
                writer.record(writer.write_shard(step.index, step.rows, step.contexts, acts, ids))
                written += 1
                if dist.is_main:
                    writer.absorb()
                acts, ids = {}, {}
            bar.update(max(min(step.rows[1], cfg.tokens) - bar.n, 0))
            continue
        if step.shard in finished or owner(step.shard, dist.world_size) != dist.rank:
            continue
        out = _forward(lm, step.load_inputs().to(device), list(cfg.hooks))
        got = tuple(next(iter(out.values())).shape[:2])
        if got != tuple(step.keep.shape):
            raise WorkbenchError(f"{lm.model_id} gave {got[1]} positions per input at {cfg.hooks[0]}; the plan expected "
                                 f"{step.keep.shape[1]} (every input of a harvest must have the same size)")
        mask = step.keep.to(device)
        for h, a in out.items():
            acts.setdefault(h, []).append(to_stored(a[mask], writer.dtype, h))
        for k, v in step.ids.items():
            ids.setdefault(k, []).append(v[step.keep].to(torch.int64 if k == "context_ids" else torch.int32))
    if dist.enabled:
        log.info("rank %d of %d wrote %d of %d shards", dist.rank, dist.world_size, written, shards)
    return shards, rows


def _check_finished(entry: dict[str, Any], step: ShardEnd, path: Path) -> None:
    """A shard found finished must be the one this plan writes; otherwise the corpus changed under the cache."""
    if tuple(entry["rows"]) != step.rows or tuple(entry["contexts"]) != step.contexts:
        raise WorkbenchError(
            f"shard {step.index} of {str(path)!r} holds rows {entry['rows']} of contexts {entry['contexts']}, but this "
            f"corpus and config give rows {list(step.rows)} of contexts {list(step.contexts)}: the corpus changed "
            f"since the harvest began. Use another --out, or delete that directory to start over."
        )


def _tokenizer_info(lm: LoadedModel) -> dict[str, Any] | None:
    tok = lm.tokenizer
    if tok is None:
        return None
    return {"name": getattr(tok, "name_or_path", ""), "vocab_size": len(tok), "prefix_ids": list(lm.prefix_ids),
            "suffix_ids": list(lm.suffix_ids), "separator_id": lm.separator_id, "pad_id": lm.pad_id}


def _forward(lm: LoadedModel, inputs: torch.Tensor, hooks: list[str]) -> dict[str, torch.Tensor]:
    return capture(lm, inputs, hooks, stop=True)


def _text_batches(lm: LoadedModel, cfg: HarvestConfig) -> Iterator[Batch]:
    docs = open_documents(cfg.corpus, split=cfg.split, field=cfg.text_field, seed=cfg.seed, revision=None,
                          subset=cfg.subset, modality="text", streaming=cfg.streaming)
    contexts: Iterator[Context] = pack_contexts(docs, lm.tokenizer, cfg.context_length, lm.prefix_ids,
                                                lm.suffix_ids, lm.separator_id, lm.pad_id)
    while True:
        chunk = list(itertools.islice(contexts, cfg.batch_size))
        if not chunk:
            return
        ids = torch.stack([c.input_ids for c in chunk])
        yield ids, torch.stack([c.keep for c in chunk]), {"token_ids": ids, "doc_ids": torch.stack([c.doc_ids for c in chunk])}


def _image_batches(lm: LoadedModel, cfg: HarvestConfig, device: torch.device) -> Iterator[Batch]:
    """Images, preprocessed only when a batch runs (a process skipping it never pays for that).

    Every CLS [+ distillation] + patch row is kept; how many rows an image gives is the model's
    business, so one image is run once to ask it, and every batch is planned with that count.
    """
    if lm.image_processor is None:
        raise WorkbenchError(f"{lm.model_id} has no image processor; cannot preprocess images for it")
    docs = open_documents(cfg.corpus, split=cfg.split, field=cfg.text_field, seed=cfg.seed, subset=cfg.subset,
                          modality="vision", streaming=cfg.streaming)

    def pixels(chunk: list) -> torch.Tensor:
        images = [d.image.convert("RGB") if hasattr(d.image, "convert") else d.image for d in chunk]
        return lm.image_processor(images=images, return_tensors="pt")["pixel_values"].to(DTYPES[cfg.model_dtype])

    t = None
    while True:
        chunk = list(itertools.islice(docs, cfg.batch_size))
        if not chunk:
            return
        if t is None:
            t = next(iter(_forward(lm, pixels(chunk[:1]).to(device), [cfg.hooks[0]]).values())).shape[1]
        b = len(chunk)
        image_ids = torch.tensor([d.index for d in chunk])
        yield (lambda c=chunk: pixels(c)), torch.ones(b, t, dtype=torch.bool), {
            "image_ids": image_ids.unsqueeze(1).expand(b, t), "patch_ids": torch.arange(t).unsqueeze(0).expand(b, t)}
