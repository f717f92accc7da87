"""Where `sae eval` gets its SAEs: any format `saes.formats` reads (ours, SAELens, sparsify, hub folders).

One place: the CLI and `evaluate(path)` both come through here, so every evaluation path accepts
whatever `saes.formats` accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from saes import SparseAutoencoder
from saes.formats import load_dir, locate_any, parse_hub_ref


@dataclass(frozen=True)
class SAERef:
    name: str  # for tables and for --out/<name>
    dir: Path
    hub: bool  # a hub snapshot: results must not be written into the download cache


def expand_sae_paths(refs: list[str | Path]) -> list[SAERef]:
    """Each reference as the SAE directories it names (itself, or every SAE of a run), with a display name.

    A name is the directory's own name, or `run/sub` for SAEs inside a run; hub references
    (hf://owner/repo/folder) resolve to their local snapshot.
    """
    out: list[SAERef] = []
    for ref in refs:
        found = locate_any(ref)
        hub = parse_hub_ref(str(ref)) is not None
        base = str(ref).rstrip("/").split("/")[-1] if hub else Path(ref).name
        for rel, d in found.items():
            out.append(SAERef(base if rel == "." else f"{base}/{rel}", d, hub))
    return out


def load_for_eval(path: str | Path, device: torch.device | str = "cpu",
                  norm_scaling_factor: float | None = None) -> SparseAutoencoder:
    """Load one SAE directory in whichever format saved it."""
    return load_dir(Path(path), device=device, norm_scaling_factor=norm_scaling_factor)
