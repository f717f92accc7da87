"""A cache's manifest read back and checked: the format, its version, and hook points this code can use.

The manifest is data a user may have been handed, so every check names what it found and what
would have been valid (the writer in harvesting/cache.py produces manifests that pass them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from workbench.errors import WorkbenchError

FORMAT_NAME = "sae-workbench-activation-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

# The dtypes a cache may store activations in, and the only ones a reader accepts. The half types
# halve the disk and the bytes every epoch reads; readers, the trainer and the evals upcast rows to
# float32 (exactly) where the SAE math runs, so a half cache costs only the rounding of the harvest.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def load_manifest_json(path: str | Path) -> dict[str, Any]:
    """A cache's manifest as JSON, checked for being one (not yet for its version)."""
    path = Path(path)
    mf = path / MANIFEST
    if not mf.is_file():
        if not path.exists():
            raise WorkbenchError(f"no cache at {str(path)!r}: the directory does not exist")
        raise WorkbenchError(f"{str(path)!r} is not an activation cache: it has no {MANIFEST}")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WorkbenchError(f"{mf} is not valid JSON ({e}); the cache is damaged") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        raise WorkbenchError(f"{mf} is not a {FORMAT_NAME} manifest (format={fmt!r})")
    return manifest


def version_problem(path: str | Path, manifest: dict[str, Any]) -> str | None:
    """Why this code cannot read a manifest's format version (None when it can)."""
    version = manifest.get("format_version")
    if version == FORMAT_VERSION:
        return None
    if isinstance(version, int) and version > FORMAT_VERSION:
        return (f"the cache at {str(path)!r} was written by a newer workbench (cache format version {version}); "
                f"this one reads version {FORMAT_VERSION}: upgrade the workbench to read it")
    return (f"the cache at {str(path)!r} was written in cache format version {version!r}; this workbench reads "
            f"version {FORMAT_VERSION} only. Harvest it again with this version (same command, new --out).")


def hooks_problem(path: str | Path, manifest: dict[str, Any]) -> str | None:
    """Why this code cannot use a manifest's hook points (None when it can).

    Each hook point must state its d_model (a positive integer) and a dtype of `DTYPES`: a
    manifest is data a user may have been handed, and a cache in a dtype this workbench never
    writes (int8, float64, ...) is refused by name here instead of being read into nonsense or
    reported as damaged shard by shard.
    """
    where = f"the cache at {str(path)!r}"
    hooks = manifest.get("hooks")
    if not isinstance(hooks, dict) or not hooks:
        return f"{where} names no hook points ({MANIFEST} gives hooks {hooks!r}); the manifest is damaged"
    for h, info in hooks.items():
        if not isinstance(info, dict):
            return f"hook {h!r} of {where} is described as {info!r}, not by its d_model and dtype; the manifest is damaged"
        d = info.get("d_model")
        if not isinstance(d, int) or isinstance(d, bool) or d < 1:
            return f"hook {h!r} of {where} has d_model {d!r}, not a positive integer; the manifest is damaged"
        if "dtype" not in info:
            return f"hook {h!r} of {where} has no dtype in {MANIFEST}; valid choices: {', '.join(DTYPES)}"
        dt = info["dtype"]
        if not isinstance(dt, str) or dt not in DTYPES:
            return (f"hook {h!r} of {where} is stored as {dt!r}, which this workbench cannot read; valid choices: "
                    f"{', '.join(DTYPES)} (harvest it again with one of them as --dtype)")
    return None


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Load and check a cache's manifest: right format, a version this code reads, hook points it can use."""
    manifest = load_manifest_json(path)
    problem = version_problem(path, manifest) or hooks_problem(path, manifest)
    if problem:
        raise WorkbenchError(problem)
    return manifest
