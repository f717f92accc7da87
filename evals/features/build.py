"""Build feature dashboards in one streaming pass over an activation cache, resumable.

    from evals.features import build_features
    build_features("cache/quickstart/saes", "cache/quickstart/acts")   # -> <sae dir>/features/

Shards are read in order, one at a time (memory is the running state plus one shard, whatever
the cache size). Every `checkpoint_every` shards the whole running state is written as one
safetensors file whose metadata names the shards done, atomically, so a killed build resumes
after the last checkpoint and, because the interval samples draw their keys from a generator
seeded per shard, ends byte-identical to an uninterrupted build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from evals.features.collect import FeatureCollector
from evals.features.config import FeatureConfig
from evals.features.finalize import finalize
from evals.features.store import DATA_FILE, META_FILE
from harvesting.reader import CacheReader
from saes.base import SparseAutoencoder
from saes.storage import load_sae, load_stats, resolve_sae_dir
from workbench.config import config_to_dict
from workbench.errors import WorkbenchError

log = logging.getLogger(__name__)

CHECKPOINT = "pass_checkpoint.safetensors"




def check_compatible(sae: SparseAutoencoder, reader: CacheReader) -> str:
    """The hook to read; refuses a cache from another model or without the SAE's hook point."""
    cfg = sae.cfg
    if cfg.model_id and reader.model_id and cfg.model_id != reader.model_id:
        raise WorkbenchError(
            f"the SAE was trained on model {cfg.model_id!r} but the cache at {str(reader.path)!r} holds "
            f"activations of {reader.model_id!r}; give a cache harvested from {cfg.model_id!r}")
    hook = cfg.hook or (reader.hooks[0] if len(reader.hooks) == 1 else "")
    if hook not in reader.hooks:
        raise WorkbenchError(
            f"the SAE reads hook point {hook or '(unknown)'!r} but the cache at {str(reader.path)!r} holds only "
            f"{', '.join(reader.hooks)}; give a cache with that hook point")
    if reader.d_model(hook) != sae.d_in:
        raise WorkbenchError(f"the SAE takes d_in={sae.d_in} but {hook} in the cache has d_model={reader.d_model(hook)}")
    return hook


def _identity(sae_dir: Path, reader: CacheReader, hook: str, cfg: FeatureConfig) -> str:
    """What a checkpoint must match to be resumed: the SAE's bytes, the cache's shards, the config."""
    h = hashlib.sha256()
    h.update((sae_dir / "sae.safetensors").read_bytes())
    h.update(json.dumps([s["files"][hook]["sha256"] for s in reader.shards]).encode())
    h.update(json.dumps(config_to_dict(cfg), sort_keys=True).encode())
    return h.hexdigest()


def _tracked_features(sae_dir: Path, num_features: int, limit: int) -> torch.Tensor:
    """All features if they fit; else the most frequently firing in training (pairs of rare
    features have too few co-firings for a meaningful correlation anyway)."""
    if num_features <= limit:
        return torch.arange(num_features)
    counts = load_stats(sae_dir).get("firing_counts")
    if counts is None or counts.numel() != num_features:
        return torch.arange(limit)
    return torch.sort(torch.argsort(counts.double(), descending=True, stable=True)[:limit]).values


def build_features(sae_dir: str | Path, cache: str | Path, out: str | Path | None = None,
                   cfg: FeatureConfig | None = None, *, model: Any = None, device: str = "cpu",
                   progress: bool = True, rebuild: bool = False, on_checkpoint: Callable[[int], None] | None = None) -> Path:
    """Compute every feature's dashboard data; returns the directory written (default `<sae>/features`).

    `model`: an already loaded `LoadedModel` for the logit lens and token strings (else loaded
    from the cache manifest). `on_checkpoint(shards_done)` runs after each checkpoint is written.
    """
    cfg = cfg or FeatureConfig()
    sae_dir = resolve_sae_dir(sae_dir)
    reader = CacheReader(cache)
    sae = load_sae(sae_dir, device=device)
    hook = check_compatible(sae, reader)
    out = Path(out) if out is not None else sae_dir / "features"
    out.mkdir(parents=True, exist_ok=True)
    if not reader.shards:
        raise WorkbenchError(f"the cache at {str(reader.path)!r} holds no rows")
    vision = reader.manifest["model"].get("modality") == "vision"
    first = reader.shards[0]
    patches = (first["rows"][1] - first["rows"][0]) // max(first["contexts"][1] - first["contexts"][0], 1) if vision else 0
    tracked = _tracked_features(sae_dir, sae.num_features, cfg.corr_features)
    col = FeatureCollector(sae.num_features, cfg, vision, patches, tracked)
    identity = _identity(sae_dir, reader, hook, cfg)
    if not rebuild and is_current(out, identity):
        log.info("feature data in %s is up to date", out)
        return out
    start = _resume(out / CHECKPOINT, identity, col)
    bar = tqdm(total=reader.num_tokens, initial=reader.shards[start - 1]["rows"][1] if start else 0, unit="tok",
               unit_scale=True, desc="feature pass", disable=not progress)
    dev = torch.device(device)
    for i in range(start, len(reader.shards)):
        shard = reader.shards[i]
        ids = reader.load_shard(i, [hook])  # the reader checks each file stays inside the cache
        acts = ids.pop(hook)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + i)
        col.consume(sae, acts, ids, shard["rows"][0], gen, dev)
        del acts
        bar.update(shard["rows"][1] - shard["rows"][0])
        done = i + 1
        if done % cfg.checkpoint_every == 0 and done < len(reader.shards):
            _save_checkpoint(out / CHECKPOINT, col.state(), {"identity": identity, "shards_done": str(done)})
            if on_checkpoint is not None:
                on_checkpoint(done)
    bar.close()
    finalize(col, sae, sae_dir, reader, hook, cfg, out, model=model, identity=identity)
    (out / CHECKPOINT).unlink(missing_ok=True)
    return out


def _save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Atomic like `workbench.io.atomic_save_safetensors`, but streamed to the file: the state is
    hundreds of MB at F=4608, and holding a serialised copy in memory would add as much again."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _resume(path: Path, identity: str, col: FeatureCollector) -> int:
    if not path.is_file():
        return 0
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("identity") != identity:
            log.info("ignoring %s: it belongs to another SAE, cache or configuration", path)
            return 0
        col.load({k: f.get_tensor(k) for k in f.keys()})
    log.info("resuming the feature pass after shard %s", meta["shards_done"])
    return int(meta["shards_done"])


def is_current(out: Path, identity: str) -> bool:
    """Whether `out` already holds finished feature data of this SAE, cache and config."""
    try:
        return json.loads((out / META_FILE).read_text()).get("identity") == identity and (out / DATA_FILE).is_file()
    except (OSError, json.JSONDecodeError):
        return False
