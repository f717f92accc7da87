"""The SAE directory format: cfg.json + sae.safetensors + stats.safetensors (DESIGN.md).

`sae.safetensors` holds W_enc [d_in, F], b_enc [F], W_dec [F, d_in], b_dec [d_in] and, for
architectures with an inference threshold (JumpReLU, BatchTopK, Feature/Mutual Choice),
threshold [F]. The weights take the model's raw activations (any input scaling was folded in
before saving). `stats.safetensors` holds per-feature firing counts from training. JSON and
safetensors only: nothing a user loads can run code.

A saved SAE is checked before anything is built from it, so damage gives one line instead of a
traceback or silent NaN metrics (`check_saved_sae`): the weights file's length against what its
header promises (a truncated copy), each core tensor's shape against cfg.json's d_in and
num_features (read from the header alone, so a cfg claiming 10^12 features is caught without
allocating them, and `sae sae info` shows no size the weights do not have), and, once loaded,
every value finite (an inf threshold is allowed: it means "never fires").
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
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


_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The tensors' entries (dtype, shape, data_offsets) of a safetensors file, from its header
    alone, after checking the file is as long as the header says; else one clear line."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if n < 2 or n > _MAX_HEADER or 8 + n > size:
                raise WorkbenchError(f"{path} is not a readable safetensors file ({size:,} bytes; no valid header: "
                                     f"damaged or truncated)")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise WorkbenchError(f"{path} is not a readable safetensors file: {e}") from None
    if not isinstance(header, dict):
        raise WorkbenchError(f"{path} is not a readable safetensors file: its header is no JSON object")
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    try:
        end = max((int(v["data_offsets"][1]) for v in entries.values()), default=0)
        shapes_ok = all(isinstance(v["shape"], list) for v in entries.values())
    except (KeyError, TypeError, ValueError, IndexError):
        raise WorkbenchError(f"{path} is not a readable safetensors file: its header lacks shapes or offsets") from None
    if not shapes_ok:
        raise WorkbenchError(f"{path} is not a readable safetensors file: its header lacks shapes")
    if 8 + n + end != size:
        raise WorkbenchError(f"{path} is truncated or damaged: {size:,} bytes, but its header promises "
                             f"{8 + n + end:,}; save or copy the SAE again")
    return entries


def check_saved_sae(directory: str | Path, cfg: dict[str, Any] | None = None) -> dict[str, tuple[int, ...]]:
    """Check an SAE directory's weights file against its cfg.json without loading the weights:
    file length, and the shapes of W_enc, b_enc, W_dec, b_dec against d_in and num_features.
    Returns every tensor's shape. One clear line (WorkbenchError) on the first disagreement."""
    d = Path(directory)
    if cfg is None:
        try:
            cfg = json.loads((d / CFG_FILE).read_text())
        except (OSError, ValueError) as e:
            raise WorkbenchError(f"{d / CFG_FILE} is not valid JSON: {e}") from None
    w = d / WEIGHTS_FILE
    if not w.is_file():
        raise WorkbenchError(f"{d} has {CFG_FILE} but no {WEIGHTS_FILE}")
    shapes = {k: tuple(int(x) for x in v["shape"]) for k, v in read_safetensors_header(w).items()}
    f, n = cfg.get("num_features"), cfg.get("d_in")
    want = {"W_enc": (n, f), "b_enc": (f,), "W_dec": (f, n), "b_dec": (n,)}
    missing = sorted(set(want) - set(shapes))
    if missing:
        raise WorkbenchError(f"{w}: the weights lack tensors {missing}; they hold {sorted(shapes)}")
    for name, shape in want.items():
        if shapes[name] != shape:
            got = shapes["W_dec"]
            raise WorkbenchError(f"{d}: {WEIGHTS_FILE} tensor {name} has shape {shapes[name]}; {CFG_FILE} implies "
                                 f"{shape} (num_features={f}, d_in={n}), but the weights hold W_dec {got}: "
                                 f"{got[0]} features of width {got[-1]}; the cfg.json and weights do not belong "
                                 f"together")
    return shapes


def check_finite_weights(tensors: dict[str, torch.Tensor], where: Path) -> None:
    """NaN anywhere, or inf outside a threshold (where inf means 'never fires'), would make every
    metric NaN without saying why: refuse it at load."""
    for name, t in tensors.items():
        if not t.is_floating_point():
            continue
        bad = t.isnan() if name == "threshold" else ~t.isfinite()
        if bool(bad.any()):
            raise WorkbenchError(f"{where}: tensor {name} holds {int(bad.sum()):,} non-finite values (NaN or inf); "
                                 f"this SAE cannot be used (retrain it, or load an earlier checkpoint)")


def read_sae_cfg(directory: str | Path) -> dict[str, Any]:
    """The raw cfg.json of the one SAE at or below `directory`, without touching its weights: what a
    table needs (width, training tokens) costs a JSON read, not a load."""
    path = resolve_sae_dir(directory) / CFG_FILE
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WorkbenchError(f"{path} is not valid JSON: {e}") from None


def load_sae(directory: str | Path, *, device: torch.device | str = "cpu") -> SparseAutoencoder:
    """Load a saved SAE (or the one SAE of a run directory) onto `device`, ready for inference."""
    d = resolve_sae_dir(directory)
    cfg = load_config(SAEConfig, read_sae_cfg(d))
    check_saved_sae(d, {"num_features": cfg.num_features, "d_in": cfg.d_in})  # before allocating anything
    try:
        tensors = load_file(str(d / WEIGHTS_FILE), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise WorkbenchError(f"{d / WEIGHTS_FILE} is not a readable safetensors file: {e}") from None
    check_finite_weights(tensors, d / WEIGHTS_FILE)
    sae = build_sae(cfg, device=device)
    sae.load_weight_tensors(tensors)
    sae.eval()
    sae.directory = d  # where it came from: its summary, eval.json and feature data live beside it
    return sae


def load_stats(directory: str | Path) -> dict[str, torch.Tensor]:
    """The training statistics saved with an SAE (firing counts), empty if none were saved.

    Statistics describe the SAE beside them, so its files are checked first (`check_saved_sae`,
    header only): `sae sae info`, which reads cfg.json and these without the weights, then never
    shows sizes the weights do not have."""
    d = Path(directory)
    try:
        raw = json.loads((d / CFG_FILE).read_text())
    except (OSError, ValueError):
        raw = None
    if isinstance(raw, dict) and "num_features" in raw:  # our format (other formats keep no stats here)
        check_saved_sae(d, raw)
    p = d / STATS_FILE
    if not p.is_file():
        return {}
    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise WorkbenchError(f"{p} is not a readable safetensors file: {e}") from None
