"""Trainer checkpoints: everything a resumed run needs to continue bit for bit, without pickle.

Layout under the run directory:
    checkpoint/step-000000200/trainer.json        step, tokens, time, the run config
    checkpoint/step-000000200/sae-000.safetensors  one per SAE: parameters, buffers, Adam state
                                                  (flattened), firing statistics
    checkpoint/latest.json                        names the newest complete step directory
A step directory is complete once every file in it is written (each atomically); only then is
latest.json (atomically) pointed at it and older step directories removed. A kill at any moment
leaves latest.json naming a complete checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from workbench.errors import WorkbenchError
from workbench.io import atomic_save_safetensors, atomic_write_json

CHECKPOINT_DIR = "checkpoint"
LATEST = "latest.json"


def flatten_optimizer(opt: torch.optim.Optimizer, names: list[str]) -> dict[str, torch.Tensor]:
    """Adam state as named tensors `opt.<param name>.<state key>` (names in parameter order)."""
    out: dict[str, torch.Tensor] = {}
    params = [p for g in opt.param_groups for p in g["params"]]
    if len(params) != len(names):
        raise ValueError("one name per optimised parameter expected")
    for p, name in zip(params, names):
        for key, val in opt.state.get(p, {}).items():
            t = val if isinstance(val, torch.Tensor) else torch.tensor(val)
            out[f"opt.{name}.{key}"] = t.detach().clone()
    return out


def restore_optimizer(opt: torch.optim.Optimizer, names: list[str], tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of `flatten_optimizer`, through `load_state_dict` so the optimizer's own checks run."""
    sd = opt.state_dict()
    state: dict[int, dict[str, Any]] = {}
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, (p, name) in enumerate(zip(params, names)):
        prefix = f"opt.{name}."
        entry = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if entry:
            state[i] = {k: v.to(p.device) if k != "step" else v for k, v in entry.items()}
    sd["state"] = state
    opt.load_state_dict(sd)


def step_dir_name(step: int) -> str:
    return f"step-{step:09d}"


def save_checkpoint(run_dir: Path, step: int, trainer_state: dict[str, Any],
                    sae_tensors: list[dict[str, torch.Tensor]]) -> Path:
    root = Path(run_dir) / CHECKPOINT_DIR
    d = root / step_dir_name(step)
    d.mkdir(parents=True, exist_ok=True)
    for i, tensors in enumerate(sae_tensors):
        atomic_save_safetensors(d / f"sae-{i:03d}.safetensors", tensors, {"step": str(step)})
    atomic_write_json(d / "trainer.json", trainer_state)
    atomic_write_json(root / LATEST, {"step": step, "dir": d.name})
    for old in root.glob("step-*"):
        if old.is_dir() and old.name != d.name:
            shutil.rmtree(old, ignore_errors=True)
    return d


def latest_checkpoint(run_dir: Path) -> Path | None:
    p = Path(run_dir) / CHECKPOINT_DIR / LATEST
    if not p.is_file():
        return None
    try:
        name = json.loads(p.read_text())["dir"]
    except (json.JSONDecodeError, KeyError) as e:
        raise WorkbenchError(f"{p} is unreadable ({e}); remove the checkpoint directory to start over") from None
    d = p.parent / name
    if not (d / "trainer.json").is_file():
        raise WorkbenchError(f"{p} names {name}, which is incomplete; remove the checkpoint directory to start over")
    return d


def load_checkpoint(d: Path, num_saes: int) -> tuple[dict[str, Any], list[dict[str, torch.Tensor]]]:
    state = json.loads((d / "trainer.json").read_text())
    tensors = []
    for i in range(num_saes):
        f = d / f"sae-{i:03d}.safetensors"
        if not f.is_file():
            raise WorkbenchError(f"checkpoint {d} lacks {f.name}: it was written by a run with fewer SAEs")
        tensors.append(load_file(str(f)))
    return state, tensors
