"""Where `sae eval` gets its SAEs: the one place a loader for other libraries' formats plugs in.

Today it reads this workbench's own SAE directories (`saes.load_sae`). When `saes.formats.load_any`
(SAELens / sparsify directories, hub repositories) exists, `load_for_eval` uses it, so every
evaluation path accepts whatever that loader accepts, with no other change.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from saes import SparseAutoencoder, find_sae_dirs, load_sae
from workbench.errors import WorkbenchError


FORMATS = ("sae-workbench (cfg.json + sae.safetensors)",)


def _load_any():
    """`saes.formats.load_any` when that module exists, else None."""
    try:
        from saes.formats import load_any  # type: ignore[attr-defined]
    except ImportError:
        return None
    return load_any


def expand_sae_paths(paths: list[str | Path]) -> list[Path]:
    """Each given path as the SAE directories it names: itself, or every SAE inside a run directory."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise WorkbenchError(f"no SAE at {str(p)!r}: the path does not exist")
        found = find_sae_dirs(p)
        if not found:
            raise WorkbenchError(f"no SAE at {str(p)!r}: no cfg.json in it or below it (give an SAE directory "
                                 f"or a run directory holding SAEs)")
        out.extend(found)
    return out


def load_for_eval(path: str | Path, device: torch.device | str = "cpu") -> SparseAutoencoder:
    """Load one SAE directory in any format the workbench reads."""
    load_any = _load_any()
    if load_any is not None:
        return load_any(str(path), device=device)
    _check_own_format(Path(path))
    return load_sae(path, device=device)


def _check_own_format(d: Path) -> None:
    """Name a foreign or unreadable cfg.json plainly instead of failing on its first unknown field."""
    cfg = d / "cfg.json"
    if not cfg.is_file():
        return  # load_sae names what is missing
    try:
        raw = json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise WorkbenchError(f"{cfg} is not valid JSON: {e}") from None
    if not isinstance(raw, dict) or not {"architecture", "d_in", "num_features"} <= set(raw):
        keys = sorted(raw)[:8] if isinstance(raw, dict) else type(raw).__name__
        raise WorkbenchError(f"unknown SAE format in {str(d)!r}: its cfg.json (keys {keys}) is not a sae-workbench "
                             f"SAE config; valid formats: {', '.join(FORMATS)}")
