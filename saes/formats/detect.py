"""Any SAE, whoever saved it: sniff the layout of each directory and load it with the right reader.

A directory with `cfg.json` is one SAE, recognised by what only its format writes:
    sae-workbench  cfg.json with num_features / format_version, + sae.safetensors
    SAELens        cfg.json with d_sae, + sae_weights.safetensors
    sparsify       cfg.json with num_latents / expansion_factor, + sae.safetensors
A directory without one is a run (ours, a sparsify run, a hub snapshot): every SAE below it is
found, named by its path relative to that directory. Training checkpoints (`checkpoint/`) are
skipped as `saes.find_sae_dirs` skips them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saes import SparseAutoencoder, load_sae
from saes.formats.common import CFG_FILE, read_json
from saes.formats.hub import Download, hub_snapshot, parse_hub_ref
from saes.formats.saelens import WEIGHTS_FILE as SAELENS_WEIGHTS
from saes.formats.saelens import load_saelens, looks_like_saelens
from saes.formats.sparsify import load_sparsify, looks_like_sparsify
from workbench.errors import WorkbenchError

FORMATS = ("workbench", "saelens", "sparsify")
_SIGNS = ("sae-workbench: cfg.json with num_features + sae.safetensors; SAELens: cfg.json with d_sae + "
          f"{SAELENS_WEIGHTS}; sparsify: cfg.json with num_latents or expansion_factor + sae.safetensors")


def detect_format(directory: str | Path) -> str:
    """Which format saved the SAE in `directory`: one of FORMATS, or one clear line saying none did."""
    d = Path(directory)
    cfg = read_json(d / CFG_FILE)
    if "num_features" in cfg or "format_version" in cfg:
        return "workbench"
    if looks_like_saelens(d, cfg):
        return "saelens"
    if looks_like_sparsify(cfg):
        return "sparsify"
    raise WorkbenchError(f"{d} holds an SAE format the workbench does not know; known layouts: {_SIGNS}")


def _resolve(ref: str | Path, download: Download | None) -> Path:
    hub = parse_hub_ref(str(ref))
    if hub is not None:
        return hub_snapshot(hub, download)
    d = Path(ref)
    if not d.exists():
        raise WorkbenchError(f"no SAE at {str(d)!r}: the path does not exist (for a hub repository write "
                             f"hf://owner/repo/folder)")
    if not d.is_dir():
        raise WorkbenchError(f"no SAE at {str(d)!r}: an SAE is a directory holding {CFG_FILE} and its weights")
    return d


def sae_dirs(root: Path) -> list[Path]:
    """SAE directories at or below `root`, in path order."""
    if (root / CFG_FILE).is_file():
        return [root]
    found = sorted(p.parent for p in root.rglob(CFG_FILE) if "checkpoint" not in p.relative_to(root).parts)
    if not found:
        raise WorkbenchError(f"no SAE at {str(root)!r}: no {CFG_FILE} in it or below it")
    return found


def load_dir(d: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
             norm_scaling_factor: float | None = None) -> SparseAutoencoder:
    """The one SAE saved in directory `d`, in whichever format saved it."""
    fmt = detect_format(d)
    if fmt == "saelens":
        return load_saelens(d, device=device, dtype=dtype, norm_scaling_factor=norm_scaling_factor)
    if fmt == "sparsify":
        return load_sparsify(d, device=device, dtype=dtype)
    sae = load_sae(d, device=device)
    return sae if sae.W_dec.dtype == dtype else sae.to(dtype)


def locate_any(ref: str | Path, *, download: Download | None = None) -> dict[str, Path]:
    """The SAE directories at `ref` (see find_any) by relative name, without loading them."""
    root = _resolve(ref, download)
    dirs = sae_dirs(root)
    known = dirs
    if len(dirs) > 1:
        known = [d for d in dirs if _is_known(d)]
        if not known:
            detect_format(dirs[0])  # raises the unknown-format line for the first one
    return {d.relative_to(root).as_posix(): d for d in known}


def _is_known(d: Path) -> bool:
    try:
        detect_format(d)
    except WorkbenchError:
        return False
    return True


def find_any(ref: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
             norm_scaling_factor: float | None = None, download: Download | None = None) -> dict[str, SparseAutoencoder]:
    """Every SAE at `ref` (a directory, a run directory, or hf://owner/repo[@rev][/folder]), by relative name.

    The name of an SAE is its path below `ref` ("." when `ref` is the SAE itself). `download`
    replaces `huggingface_hub.snapshot_download` (tests, mirrors). Directories below a run whose
    cfg.json is no SAE format are skipped when others are SAEs; alone, they are an error.
    """
    kw: dict[str, Any] = {"device": device, "dtype": dtype, "norm_scaling_factor": norm_scaling_factor}
    return {name: load_dir(d, **kw) for name, d in locate_any(ref, download=download).items()}


def load_any(ref: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
             norm_scaling_factor: float | None = None, download: Download | None = None) -> SparseAutoencoder:
    """The one SAE at `ref` (see find_any), or one line listing the names to choose from."""
    found = locate_any(ref, download=download)
    if len(found) > 1:
        raise WorkbenchError(f"{str(ref)!r} holds {len(found)} SAEs; load one of: {', '.join(found)}")
    (d,) = found.values()
    return load_dir(d, device=device, dtype=dtype, norm_scaling_factor=norm_scaling_factor)
