"""What a run will do, resolved from its `TrainConfig` and its data before anything trains.

Hook points (the cache's only one when none is named), the run directory, steps per epoch and
in total, the dead-feature horizon and the decays derived from it, the input scales, the matmul
dtype for choosing features, and the sweep: one `(name, SAEConfig)` per SAE. Every check that
can fail on the user's input fails here, before a model is built or a file written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saes.config import SAEConfig, TrainConfig, sae_name
from saes.data import ActivationSource
from saes.registry import sae_class
from workbench.config import config_to_dict
from workbench.errors import WorkbenchError, choices_error

# SAEConfig fields a run sets for all its SAEs (the sweep axes k and hook are set per SAE): every
# architecture hyper-parameter the run sets goes into every SAE's cfg.json, read or not, so a
# cfg.json always reads the same way.
SHARED_SAE_FIELDS = tuple(sorted(({f.name for f in dataclasses.fields(SAEConfig)}
                                  & {f.name for f in dataclasses.fields(TrainConfig)}) - {"k", "hook"}))


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_matmul_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None = choose on the fp32 matmul; bf16 = choose on a bf16 matmul, values recomputed in fp32."""
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()):
        return torch.bfloat16
    return None


@dataclass
class RunPlan:
    hooks: list[str]
    out: Path
    steps_per_epoch: int
    total_steps: int
    dead_tokens: int  # a feature not fired in this many tokens is dead
    usage_decay: float  # per-step decay of the running firing rate (a window of about dead_tokens)
    threshold_ema: float  # decay of running inference thresholds (shortened for very short runs)
    scales: dict[str, float]  # input scale per hook (1.0 without --normalize)
    saes: list[tuple[str, SAEConfig]]  # the sweep: run-relative directory name and config of each SAE

    def record(self, cfg: TrainConfig, state_format: int, *, matmul_dtype: str, device: str, world_size: int,
               saes: list[dict[str, Any]]) -> dict[str, Any]:
        """run.json: the config, what was resolved from it, and one row per SAE (`saes`, from the trainer)."""
        return {
            "format": state_format,
            "config": config_to_dict(cfg),
            "resolved": {
                "hooks": self.hooks, "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
                "tokens_per_step": cfg.batch_size, "dead_tokens": self.dead_tokens, "matmul_dtype": matmul_dtype,
                "input_scales": self.scales, "world_size": world_size, "device": device,
                "threshold_ema": self.threshold_ema, "usage_decay": self.usage_decay,
            },
            "saes": saes,
        }


def plan_run(cfg: TrainConfig, source: ActivationSource, world_size: int = 1) -> RunPlan:
    hooks = resolve_hooks(cfg, source)
    b = cfg.batch_size
    if b % world_size:
        raise WorkbenchError(f"--batch-size {b} must be divisible by the number of ranks ({world_size})")
    steps_per_epoch = source.num_batches(b, split="train", heldout_fraction=cfg.heldout_fraction)
    if steps_per_epoch == 0:
        more = " or raise --tokens" if cfg.model else ""
        raise WorkbenchError(
            f"the training split holds fewer tokens than one batch of {b}; lower --batch-size or --heldout-fraction{more}"
        )
    total = steps_per_epoch * cfg.epochs
    if cfg.max_tokens:
        total = min(total, cfg.max_tokens // b)
        if total == 0:
            raise WorkbenchError(f"--max-tokens {cfg.max_tokens} is less than one batch of {b} tokens")
    dead_tokens = cfg.dead_tokens or max(b, min(10_000_000, total * b // 10))
    window_steps = max(1.0, dead_tokens / b)
    saes = [(sae_name(h, arch, k, exp), sae_config(cfg, source, h, arch, k, exp))
            for h, arch, k, exp in cfg.sae_grid(hooks)]
    return RunPlan(
        hooks=hooks, out=resolve_out(cfg), steps_per_epoch=steps_per_epoch, total_steps=total,
        dead_tokens=dead_tokens, usage_decay=min(0.999, max(0.5, 1 - 1 / window_steps)),
        threshold_ema=min(cfg.threshold_ema, max(0.0, 1 - 10 / total)),
        scales={h: (float(source.norm_scale(h)) if cfg.normalize else 1.0) for h in hooks}, saes=saes,
    )


def resolve_hooks(cfg: TrainConfig, source: ActivationSource) -> list[str]:
    available = list(source.hooks)
    hooks = list(cfg.hook)
    if not hooks:
        if len(available) != 1:
            raise WorkbenchError(
                f"the cache holds {len(available)} hook points; pass --hooks with one or more of: "
                f"{', '.join(available)}"
            )
        hooks = available
    for h in hooks:
        if h not in available:
            raise choices_error("hook point", h, available)
    if len(set(hooks)) != len(hooks):
        raise WorkbenchError(f"--hooks lists a hook point twice: {hooks}")
    return hooks


def resolve_out(cfg: TrainConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    if cfg.model:  # a cacheless run: beside where `sae harvest` would put the cache
        corpus = Path(cfg.corpus or "wiki-vital").stem
        return Path("cache") / "saes" / f"{Path(cfg.model.rstrip('/')).name}-{corpus}"
    if not cfg.cache:
        raise WorkbenchError("no output directory: pass out= (or --out DIR)")
    c = Path(cfg.cache)
    return c.parent / "saes" / c.name


def sae_config(cfg: TrainConfig, source: ActivationSource, hook: str, arch: str, k: int, exp: int) -> SAEConfig:
    """The config of one SAE of the sweep (an architecture without k gets a placeholder k)."""
    d = int(source.d_model(hook))
    f = exp * d
    if sae_class(arch).uses_k and k >= f:
        raise WorkbenchError(f"k={k} must be below the number of features ({f} = expansion {exp} x d_model {d} of {hook})")
    shared = {n: getattr(cfg, n) for n in SHARED_SAE_FIELDS}
    return SAEConfig(architecture=arch, d_in=d, num_features=f, k=k or min(32, f - 1), hook=hook,
                     model_id=str(getattr(source, "model_id", "") or ""), **shared)
