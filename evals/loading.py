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
    return _distinct_names(out)


def _distinct_names(refs: list[SAERef]) -> list[SAERef]:
    """Different SAEs that share a display name (the same leaf, e.g. `topk-k32-x8`, in several runs) take
    as many of their parent folders as it needs to tell them apart, since `--out OUT/<name>` would
    otherwise write one SAE's eval.json over another's."""
    names = [r.name for r in refs]
    for _ in range(16):
        dirs_by_name: dict[str, set[Path]] = {}
        for n, r in zip(names, refs):
            dirs_by_name.setdefault(n, set()).add(r.dir.resolve())
        clash = {n for n, ds in dirs_by_name.items() if len(ds) > 1}
        if not clash:
            break
        for i, r in enumerate(refs):
            if names[i] in clash:
                parts = r.dir.resolve().parts
                depth = names[i].count("/") + 2
                names[i] = "/".join(parts[-depth:])
    return [SAERef(n, r.dir, r.hub) for n, r in zip(names, refs)]


def load_for_eval(path: str | Path, device: torch.device | str = "cpu",
                  norm_scaling_factor: float | None = None) -> SparseAutoencoder:
    """Load one SAE directory in whichever format saved it."""
    return load_dir(Path(path), device=device, norm_scaling_factor=norm_scaling_factor)
