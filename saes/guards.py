"""What stops a run rather than let it waste work or mix results: non-finite numbers, a changed cache.

- Non-finite values: one check per step (a single host sync over all hooks and SAEs) of the
  input batches, the losses and the gradient norms. The first NaN or inf stops the run at once,
  naming the step, the SAE and the hook, before the next checkpoint is written, so the last
  checkpoint on disk is the last good state.
- Resume identity: a checkpoint records what data it was trained on (the cache's identity, a
  hash of its shard checksums, so the same path with other content is told apart) and the
  device type (CPU and CUDA kernels round differently, so a resumed run would not equal an
  uninterrupted one). A resume that differs in either is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from workbench.errors import WorkbenchError


class NonFiniteError(WorkbenchError):
    """Training met a NaN or inf."""


def finite_flags(xs: dict[str, Tensor], losses: list[Tensor], grad_norms: list[Tensor | None]) -> Tensor:
    """One boolean per hook input, per SAE loss and per SAE gradient norm (True = finite), on device."""
    flags = [torch.isfinite(x).all() for x in xs.values()]
    flags += [torch.isfinite(loss.detach()).all() for loss in losses]
    flags += [torch.isfinite(g).all() if g is not None else torch.ones((), dtype=torch.bool, device=losses[0].device)
              for g in grad_norms]
    return torch.stack([f.to(flags[0].device) for f in flags])


def raise_if_not_finite(flags: Tensor, *, step: int, hooks: list[str], saes: list[tuple[str, str]],
                        checkpoint: Callable[[], Path | None]) -> None:
    """Stop the run when any flag is False, naming the step, and the hook or the SAE (`saes`: (name, hook))."""
    ok = flags.tolist()  # the one host sync of the check
    if all(ok):
        return
    last = checkpoint()
    kept = (f"the last good checkpoint ({last.name}) is kept; resume from it with --resume after fixing the cause"
            if last is not None else "no checkpoint had been written yet")
    nh, ns = len(hooks), len(saes)
    for i, h in enumerate(hooks):
        if not ok[i]:
            raise NonFiniteError(f"step {step}: the activations of hook {h} hold NaN or inf; training stopped before "
                                 f"any SAE learned from them ({kept}). Check the cache with `sae cache verify`")
    for j, (name, hook) in enumerate(saes):
        if not ok[nh + j]:
            raise NonFiniteError(f"step {step}: SAE {name} (hook {hook}): the loss is NaN or inf; training stopped "
                                 f"({kept}; a lower --lr usually helps)")
        if not ok[nh + ns + j]:
            raise NonFiniteError(f"step {step}: SAE {name} (hook {hook}): the gradient is NaN or inf; training "
                                 f"stopped ({kept}; a lower --lr usually helps)")


def run_identity(source: Any, device: torch.device) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the data's identity (None when unknown) and the device type."""
    ident = getattr(source, "identity", None)
    return {"data": ident() if callable(ident) else ident, "device_type": device.type}


def identity_differences(saved: dict[str, Any] | None, now: dict[str, Any], out: Path, cache: str) -> None:
    """Refuse to resume when the checkpoint was trained on other data or on another device type."""
    if not saved:
        return
    if saved.get("data") and now.get("data") and saved["data"] != now["data"]:
        raise WorkbenchError(
            f"cannot resume {out}: the cache {cache or '(given source)'} holds other data than the run was trained on "
            f"(checkpoint identity {str(saved['data'])[:12]}..., now {str(now['data'])[:12]}...); use another --out"
        )
    if saved.get("device_type") and saved["device_type"] != now["device_type"]:
        raise WorkbenchError(
            f"cannot resume {out}: it was trained on {saved['device_type']}, this run is on {now['device_type']} "
            f"(the kernels round differently, so the result would not equal an uninterrupted run); pass "
            f"--device {saved['device_type']} or use another --out"
        )
