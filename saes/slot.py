"""One SAE of a run, with its optimiser and the health statistics the trainer keeps on it.

Health: tokens since each feature last fired (dead = not fired in `dead_tokens`), firing counts
over the run, and a running firing rate per token (aux_zipf's usage). `record` folds one step's
statistics in, summed over ranks in one all-reduce, and adds the step to the metric window.

After the run's last update, `record` also calibrates the inference threshold of an SAE trained
with a batch rule (BatchTopK, Feature Choice, Mutual Choice) on the run's last batches (about
16k tokens), with the final weights: the running threshold lags the weights by its averaging
window (see ThresholdInferenceSAE.calibrate_threshold).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from saes.base import SparseAutoencoder, StepOutput
from saes.run_log import add_to_window


def width_scaled_lr(num_features: int, base: float = 8e-4) -> float:
    """Adam rate base / sqrt(F / 2^14): the width scaling of Gao et al. (2024) and sparsify.

    Their base, 2e-4, was fitted to runs of billions of tokens; on the 0.4M-4M-token runs measured
    here (benchmarks/bench_schedule.py, two widths) it left held-out FVU far higher than 4x the
    rate did (0.17 vs 0.12 after 1M tokens), while 16x killed 6-15% of the features. 8e-4 is the
    largest measured base that killed none.
    """
    return base / math.sqrt(num_features / 2**14)


def make_adam(params: list[Tensor], lr: float, betas: tuple[float, ...], eps: float,
              device: torch.device) -> torch.optim.Optimizer:
    """Adam, fused where torch has a fused kernel for the device (one pass over all parameters)."""
    kw: dict[str, Any] = dict(lr=lr, betas=tuple(betas), eps=eps)
    try:
        return torch.optim.Adam(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, **kw)


@dataclass
class Slot:
    """One SAE of the run with its optimiser and health statistics."""

    name: str
    hook: str
    sae: SparseAutoencoder
    opt: torch.optim.Optimizer
    param_names: list[str]
    lr: float
    aux: str
    since_fired: Tensor  # tokens since each feature last fired
    fired_total: Tensor  # firing counts over training
    usage: Tensor  # running firing rate per token
    usage_seen: int = 0  # how many steps the running rate has seen (0 = not started)
    step_fn: Callable[..., Any] | None = None
    window: dict[str, Any] = field(default_factory=dict)
    last_metrics: dict[str, Any] = field(default_factory=dict)
    # A batch-rule SAE's calibration set (the run's last batches), and once the last step has run
    # the reduce to calibrate with: `record` calibrates after that step's update, then clears both.
    recent: list[Tensor] = field(default_factory=list)
    calibrate_now: Callable[[Tensor, str], Tensor] | None = None

    @classmethod
    def new(cls, name: str, hook: str, sae: SparseAutoencoder, opt: torch.optim.Optimizer, param_names: list[str],
            lr: float, aux: str, device: torch.device) -> "Slot":
        f = sae.num_features
        slot = cls(name=name, hook=hook, sae=sae, opt=opt, param_names=param_names, lr=lr, aux=aux,
                   since_fired=torch.zeros(f, dtype=torch.long, device=device),
                   fired_total=torch.zeros(f, dtype=torch.long, device=device),
                   usage=torch.zeros(f, dtype=torch.float32, device=device))
        slot.step_fn = slot.training_step
        return slot

    def training_step(self, x: Tensor, ctx: Any) -> Any:
        """The SAE's training step; a batch-rule SAE's last few batches are kept for `record`."""
        out = self.sae.training_step(x, ctx)
        if type(self.sae).threshold_inference:
            if ctx.step >= ctx.total_steps - self.sae.calibration_batches(x.shape[0]):
                self.recent.append(x.detach())
            if ctx.step + 1 >= ctx.total_steps:
                self.calibrate_now = ctx.reduce
        return out

    @property
    def params(self) -> list[Tensor]:
        return [p for g in self.opt.param_groups for p in g["params"]]

    def sum_grads(self, reduce: Callable[[Tensor, str], Tensor]) -> None:
        """Sum the gradients over ranks in one all-reduce (a parameter without a gradient counts as zeros)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        reduce(flat, "sum")
        off = 0
        for p, g in zip(self.params, grads):
            n = g.numel()
            p.grad = flat[off:off + n].view_as(p)
            off += n

    def dead_fraction(self, dead_tokens: int) -> float:
        return float((self.since_fired >= dead_tokens).float().mean())

    @torch.no_grad()
    def record(self, out: StepOutput, n: int, denom: Tensor, lr: float, usage_decay: float,
               reduce: Callable[[Tensor, str], Tensor]) -> None:
        """Fold one step's firing counts and loss sums (summed over ranks) into health and window."""
        names = sorted(out.terms)
        f = self.sae.num_features
        packed = torch.cat([out.fired.to(torch.float64), out.sse.view(1).double(),
                            *[out.terms[k].view(1).double() for k in names]])
        reduce(packed, "sum")
        fired = packed[:f]
        self.since_fired = torch.where(fired > 0, torch.zeros_like(self.since_fired), self.since_fired + n)
        self.fired_total += fired.long()
        rate = (fired / n).to(torch.float32)
        if self.usage_seen == 0:
            self.usage.copy_(rate)
        else:
            self.usage.mul_(usage_decay).add_(rate, alpha=1 - usage_decay)
        self.usage_seen += 1
        add_to_window(self.window, {"sse": packed[f], "denom": denom.double(), "l0": fired.sum() / n,
                                    **{k: packed[f + 1 + i] for i, k in enumerate(names)}}, lr)
        if self.calibrate_now is not None and self.recent:  # the last update is applied: the weights are final
            x, step_reduce = torch.cat(self.recent), self.calibrate_now
            self.recent, self.calibrate_now = [], None
            self.sae.calibrate_threshold(x, step_reduce)
