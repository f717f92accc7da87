"""Trainer checkpoints: everything a resumed run needs to continue bit for bit, without pickle.

Layout under the run directory:
    checkpoint/step-000000200/trainer.json        step, tokens, time, the run config
    checkpoint/step-000000200/sae-000.safetensors  one per SAE: parameters, buffers, Adam state
                                                  (flattened), firing statistics
    checkpoint/latest.json                        names the newest complete step directory
A step directory is complete once every file in it is written (each atomically); only then is
latest.json (atomically) pointed at it and older step directories removed. A kill at any moment
leaves latest.json naming a complete checkpoint.

`pack_slot` / `unpack_slot` turn one SAE's training state (a `saes.slot.Slot`) into the named
tensors of its sae-NNN.safetensors and back; `config_differences` says why a run cannot resume.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file

from workbench.errors import WorkbenchError
from workbench.io import atomic_save_safetensors, atomic_write_json

if TYPE_CHECKING:
    from saes.slot import Slot

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


def stream_state_file(step_dir: Path, rank: int) -> Path:
    return Path(step_dir) / f"stream-{rank:05d}.safetensors"


def save_stream_state(run_dir: Path, step: int, rank: int, state: dict[str, Any]) -> None:
    """One rank's shuffle buffer (`harvesting.shuffle_buffer.ShuffleBuffer.state`) into the step directory of `step`.

    Every rank writes its own before rank 0 writes trainer.json and points latest.json at the step
    (the trainer puts a barrier between), so a checkpoint named by latest.json holds the buffers,
    generators and corpus positions of the same step as its SAEs.
    """
    d = Path(run_dir) / CHECKPOINT_DIR / step_dir_name(step)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {"rng": state["rng"]}
    tensors.update({f"rows.{h}": v.contiguous() for h, v in state["rows"].items()})
    tensors.update({f"pending.{h}": v.contiguous() for h, v in state["pending"].items()})
    atomic_save_safetensors(stream_state_file(d, rank), tensors,
                            {"step": str(step), "chunks": str(state["chunks"]), "n": str(state["n"])})


def load_stream_state(step_dir: Path, rank: int) -> dict[str, Any]:
    from safetensors import safe_open

    f = stream_state_file(step_dir, rank)
    if not f.is_file():
        raise WorkbenchError(f"checkpoint {step_dir} lacks {f.name} (the shuffle buffer of rank {rank}): it was written "
                             f"by a run with other ranks or without --shuffle-buffer; use another --out")
    with safe_open(str(f), "pt") as fh:
        meta = fh.metadata()
    t = load_file(str(f))
    return {"chunks": int(meta["chunks"]), "n": int(meta["n"]), "rng": t["rng"],
            "rows": {k[5:]: v for k, v in t.items() if k.startswith("rows.")},
            "pending": {k[8:]: v for k, v in t.items() if k.startswith("pending.")}}


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


def load_checkpoint(d: Path, num_saes: int, load: Callable[[str], dict[str, torch.Tensor]] | None = None
                    ) -> tuple[dict[str, Any], list[dict[str, torch.Tensor]]]:
    """trainer.json and each SAE's tensors, read by `load` (default: whole; a feature-parallel rank
    reads its rows only, saes.shard_files.read_rows)."""
    load = load or load_file
    state = json.loads((d / "trainer.json").read_text())
    tensors = []
    for i in range(num_saes):
        f = d / f"sae-{i:03d}.safetensors"
        if not f.is_file():
            raise WorkbenchError(f"checkpoint {d} lacks {f.name}: it was written by a run with fewer SAEs")
        tensors.append(load(str(f)))
    return state, tensors


def pack_slot(slot: "Slot") -> dict[str, torch.Tensor]:
    """One SAE's state as named tensors: `sae.*` (parameters, buffers), `opt.*` (Adam), `health.*`."""
    t = {f"sae.{k}": v for k, v in slot.sae.state_dict().items()}
    t.update(flatten_optimizer(slot.opt, slot.param_names))
    t.update({"health.since_fired": slot.since_fired, "health.fired_total": slot.fired_total,
              "health.usage": slot.usage, "health.usage_steps": torch.tensor(slot.usage_seen)})
    # A batch-rule SAE's calibration batches seen so far (only inside the run's last few steps): a run
    # resumed there must calibrate its threshold on the same batches as an uninterrupted one. (Rank 0
    # writes checkpoints, so a data-parallel run resumed there calibrates on rank 0's slices alone.)
    t.update({f"calibration.{i:03d}": x for i, x in enumerate(slot.recent)})
    return t


def unpack_slot(slot: "Slot", tensors: dict[str, torch.Tensor], device: torch.device) -> None:
    """Inverse of `pack_slot`, naming any tensor whose shape does not fit this run's SAE."""
    sd = {k[4:]: v for k, v in tensors.items() if k.startswith("sae.")}
    own = slot.sae.state_dict()
    for k, v in sd.items():
        if k in own and own[k].shape != v.shape:
            raise WorkbenchError(
                f"cannot resume {slot.name}: checkpoint tensor {k} has shape {tuple(v.shape)}, the SAE "
                f"{tuple(own[k].shape)} (d_model {slot.sae.d_in} of {slot.hook} in this cache)"
            )
    slot.sae.load_state_dict({k: v.to(device) for k, v in sd.items()})
    restore_optimizer(slot.opt, slot.param_names, tensors)
    slot.since_fired.copy_(tensors["health.since_fired"])
    slot.fired_total.copy_(tensors["health.fired_total"])
    slot.usage.copy_(tensors["health.usage"])
    slot.usage_seen = int(tensors["health.usage_steps"])
    slot.recent = [tensors[k].to(device) for k in sorted(k for k in tensors if k.startswith("calibration."))]


def config_differences(saved: dict[str, Any], now: dict[str, Any], may_differ: tuple[str, ...]) -> str:
    """"field: checkpoint X, now Y; ..." for every config field outside `may_differ` that changed ("" if none)."""
    diff = sorted(k for k in set(saved) | set(now) if k not in may_differ and saved.get(k) != now.get(k))
    return "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in diff)


def resumable_state(out: Path, cfg: Any, identity: dict[str, Any], names: list[str],
                    load: Callable[[str], dict[str, torch.Tensor]] | None = None,
                    ) -> tuple[dict[str, Any], list[dict[str, torch.Tensor]]] | None:
    """The latest checkpoint of the run at `out` (None when there is none), refused in one line
    unless `cfg.resume` asks for it and it was trained by this config, on this data, for these SAEs."""
    from saes.config import RESUMABLE_FIELDS
    from saes.guards import identity_differences
    from workbench.config import config_to_dict

    ckpt = latest_checkpoint(out)
    if ckpt is None:
        return None
    if not cfg.resume:
        raise WorkbenchError(
            f"{out} already holds a run (checkpoint {ckpt.name}); pass --resume to continue it, "
            f"or choose another --out"
        )
    state, tensors = load_checkpoint(ckpt, len(names), load)
    # a field added since the checkpoint was written held its default then
    saved = {**config_to_dict(type(cfg)()), **state["config"]}
    shown = config_differences(saved, config_to_dict(cfg), RESUMABLE_FIELDS)
    if shown:
        raise WorkbenchError(f"cannot resume {out}: the run config differs ({shown}); use another --out")
    identity_differences(state.get("identity"), identity, out, cfg.cache)
    if state["saes"] != names:
        raise WorkbenchError(f"cannot resume {out}: it trains {state['saes']}, this run {names}")
    return state, tensors
