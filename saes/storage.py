"""The SAE directory format: cfg.json + sae.safetensors + stats.safetensors (DESIGN.md).

`sae.safetensors` holds W_enc [d_in, F], b_enc [F], W_dec [F, d_in], b_dec [d_in] and, for
architectures with an inference threshold (JumpReLU, BatchTopK, Feature/Mutual Choice),
threshold [F]. The weights take the model's raw activations (any input scaling was folded in
before saving). `stats.safetensors` holds per-feature firing counts from training. JSON and
safetensors only: nothing a user loads can run code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from saes.base import SparseAutoencoder
from saes.config import SAEConfig
from saes.registry import build_sae
from workbench.config import config_to_dict, load_config
from workbench.errors import WorkbenchError
from workbench.io import atomic_save_safetensors, atomic_write_json

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
STATS_FILE = "stats.safetensors"


def save_sae(sae: SparseAutoencoder, directory: str | Path, stats: dict[str, torch.Tensor] | None = None) -> Path:
    """Write one SAE atomically, file by file (weights first, cfg.json last: its presence marks a complete SAE)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = {"architecture": sae.architecture, "format": "sae-workbench"}
    atomic_save_safetensors(d / WEIGHTS_FILE, sae.weight_tensors(), meta)
    if stats is not None:
        atomic_save_safetensors(d / STATS_FILE, stats, meta)
    atomic_write_json(d / CFG_FILE, config_to_dict(sae.cfg))
    return d


def find_sae_dirs(directory: str | Path) -> list[Path]:
    """SAE directories at or below `directory` (a run directory holds one per trained SAE)."""
    d = Path(directory)
    if (d / CFG_FILE).is_file():
        return [d]
    return sorted(p.parent for p in d.rglob(CFG_FILE) if "checkpoint" not in p.relative_to(d).parts)


def resolve_sae_dir(directory: str | Path) -> Path:
    """The one SAE directory at or below `directory` (a run directory may hold one), else one clear line."""
    d = Path(directory)
    if not d.exists():
        raise WorkbenchError(f"no SAE at {str(d)!r}: the directory does not exist")
    dirs = find_sae_dirs(d)
    if not dirs:
        raise WorkbenchError(f"no SAE at {str(d)!r}: no {CFG_FILE} in it or below it")
    if len(dirs) > 1:
        names = ", ".join(str(p.relative_to(d)) for p in dirs)
        raise WorkbenchError(f"{str(d)!r} holds {len(dirs)} SAEs; load one of: {names}")
    return dirs[0]


def load_sae(directory: str | Path, *, device: torch.device | str = "cpu") -> SparseAutoencoder:
    """Load a saved SAE (or the one SAE of a run directory) onto `device`, ready for inference."""
    d = resolve_sae_dir(directory)
    try:
        raw = json.loads((d / CFG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise WorkbenchError(f"{d / CFG_FILE} is not valid JSON: {e}") from None
    cfg = load_config(SAEConfig, raw)
    if not (d / WEIGHTS_FILE).is_file():
        raise WorkbenchError(f"{d} has {CFG_FILE} but no {WEIGHTS_FILE}")
    sae = build_sae(cfg, device=device)
    tensors = load_file(str(d / WEIGHTS_FILE), device=str(device))
    sae.load_weight_tensors(tensors)
    sae.eval()
    sae.directory = d  # where it came from: its summary, eval.json and feature data live beside it
    return sae


def load_stats(directory: str | Path) -> dict[str, torch.Tensor]:
    """The training statistics saved with an SAE (firing counts), empty if none were saved."""
    p = Path(directory) / STATS_FILE
    return load_file(str(p)) if p.is_file() else {}
