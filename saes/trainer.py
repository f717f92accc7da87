"""The trainer: one pass over the cache feeds every SAE of the run.

Per step: read one global batch (all hook points at once), scale it, compute each hook's batch
variance once (over all ranks), then for every SAE: training step -> backward -> sum gradients
over ranks -> remove the decoder gradient's parallel part -> clip -> Adam with the scheduled
rate -> renormalise decoder rows -> firing statistics. Metrics go to metrics.jsonl and the
progress bar every `log_every` steps; checkpoints (atomic, see saes.checkpoint) every
`checkpoint_every` steps; at the end the held-out split is evaluated, the input scale folded
into the weights, and each SAE saved in the common format with a summary.

Resuming continues from the last checkpoint with the same result as an uninterrupted run: the
data order is a function of (seed, epoch, batch index), and every piece of state that a step
reads (weights, Adam moments, thresholds, firing statistics, step count) is in the checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saes.base import SparseAutoencoder, StepContext
from saes.checkpoint import flatten_optimizer, latest_checkpoint, load_checkpoint, restore_optimizer, save_checkpoint
from saes.config import RESUMABLE_FIELDS, SAEConfig, TrainConfig, sae_name
from saes.data import ActivationSource, open_cache
from saes.distributed import DistContext, resolve_device, setup_distributed
from saes.geometric_median import geometric_median
from saes.losses import lr_multiplier, moment_sums, variance_from_sums
from saes.registry import build_sae, resolve_aux_loss, sae_class
from saes.storage import save_sae
from workbench.config import config_to_dict, save_config
from workbench.errors import WorkbenchError, choices_error
from workbench.io import atomic_write_json

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
STATE_FORMAT = 1
# SAEConfig fields a run sets for all its SAEs (the sweep axes k and hook are set per SAE).
SHARED_SAE_FIELDS = tuple(sorted(({f.name for f in dataclasses.fields(SAEConfig)} & {f.name for f in dataclasses.fields(TrainConfig)})
                                 - {"k", "hook"}))


def width_scaled_lr(num_features: int, base: float = 2e-4) -> float:
    """Adam rate 2e-4 / sqrt(F / 2^14): the width scaling of Gao et al. (2024) and sparsify."""
    return base / math.sqrt(num_features / 2**14)


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
    window: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> list[Tensor]:
        return [p for g in self.opt.param_groups for p in g["params"]]


class Trainer:
    """Train every SAE a `TrainConfig` describes on one activation source.

    `source` defaults to the cache reader of `cfg.cache`; any object with the reader's interface
    works (e.g. `saes.data.TensorSource`). `callback(trainer, step)` runs after every step.
    """

    def __init__(self, cfg: TrainConfig, source: ActivationSource | None = None, *,
                 callback: Callable[["Trainer", int], None] | None = None) -> None:
        self.cfg = cfg
        self.callback = callback
        self.device = resolve_device(cfg.device)
        self.dist: DistContext = setup_distributed(self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.source = source if source is not None else open_cache(cfg.cache)
        self.hooks = self._resolve_hooks()
        self.out = self._resolve_out()
        b = cfg.batch_size
        if b % self.dist.world_size:
            raise WorkbenchError(f"--batch-size {b} must be divisible by the number of ranks ({self.dist.world_size})")
        self.steps_per_epoch = self.source.num_batches(b, split="train", heldout_fraction=cfg.heldout_fraction)
        if self.steps_per_epoch == 0:
            raise WorkbenchError(
                f"the training split holds fewer tokens than one batch of {b}; lower --batch-size or --heldout-fraction"
            )
        total = self.steps_per_epoch * cfg.epochs
        if cfg.max_tokens:
            total = min(total, cfg.max_tokens // b)
            if total == 0:
                raise WorkbenchError(f"--max-tokens {cfg.max_tokens} is less than one batch of {b} tokens")
        self.total_steps = total
        self.dead_tokens = cfg.dead_tokens or max(b, min(10_000_000, total * b // 10))
        window_steps = max(1.0, self.dead_tokens / b)
        self.usage_decay = min(0.999, max(0.5, 1 - 1 / window_steps))
        self.threshold_ema = min(cfg.threshold_ema, max(0.0, 1 - 10 / total))
        self.matmul_dtype = resolve_matmul_dtype(cfg.precision, self.device)
        self.scales = {h: (float(self.source.norm_scale(h)) if cfg.normalize else 1.0) for h in self.hooks}
        self.step = 0
        self.tokens = 0
        self.elapsed = 0.0
        self.session_tokens = 0  # tokens and seconds trained by this process (not counting a resumed part)
        self.session_time = 0.0
        self.slots = self._build_slots()
        resumed = self._maybe_resume()
        if not resumed:
            self._initialise()
        if self.dist.is_main:
            atomic_write_json(self.out / RUN_FILE, self._run_record())
            save_config(cfg, self.out / "train_config.json")

    # ------------------------------------------------------------------ setup

    def _resolve_hooks(self) -> list[str]:
        available = list(self.source.hooks)
        hooks = list(self.cfg.hook)
        if not hooks:
            if len(available) != 1:
                raise WorkbenchError(
                    f"the cache holds {len(available)} hook points; pass --hook with one or more of: "
                    f"{', '.join(available)}"
                )
            hooks = available
        for h in hooks:
            if h not in available:
                raise choices_error("hook point", h, available)
        if len(set(hooks)) != len(hooks):
            raise WorkbenchError(f"--hook lists a hook point twice: {hooks}")
        return hooks

    def _resolve_out(self) -> Path:
        if self.cfg.out:
            return Path(self.cfg.out)
        if not self.cfg.cache:
            raise WorkbenchError("no output directory: pass out= (or --out DIR)")
        c = Path(self.cfg.cache)
        return c.parent / "saes" / c.name

    def _sae_config(self, hook: str, arch: str, k: int, exp: int) -> SAEConfig:
        d = int(self.source.d_model(hook))
        f = exp * d
        if sae_class(arch).uses_k and k >= f:
            raise WorkbenchError(
                f"k={k} must be below the number of features ({f} = expansion {exp} x d_model {d} of {hook})"
            )
        # Every architecture hyper-parameter the run sets (SAEConfig fields that TrainConfig also
        # has) goes into every SAE's cfg.json, read or not, so a cfg.json always reads the same way.
        shared = {n: getattr(self.cfg, n) for n in SHARED_SAE_FIELDS}
        return SAEConfig(architecture=arch, d_in=d, num_features=f, k=k or min(32, f - 1), hook=hook,
                         model_id=str(getattr(self.source, "model_id", "") or ""), **shared)

    def _build_slots(self) -> list[Slot]:
        cfg = self.cfg
        slots = []
        for hook, arch, k, exp in cfg.sae_grid(self.hooks):
            name = sae_name(hook, arch, k, exp)
            scfg = self._sae_config(hook, arch, k, exp)
            gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
            sae = build_sae(scfg, device=self.device, generator=gen)
            named = [(n, p) for n, p in sae.named_parameters() if p.requires_grad]
            lr = cfg.lr or width_scaled_lr(scfg.num_features)
            opt = make_adam([p for _, p in named], lr, cfg.adam_betas, cfg.adam_eps, self.device)
            aux = resolve_aux_loss(type(sae), cfg.aux_loss)
            f = scfg.num_features
            slots.append(Slot(
                name=name, hook=hook, sae=sae, opt=opt, param_names=[n for n, _ in named], lr=lr, aux=aux,
                since_fired=torch.zeros(f, dtype=torch.long, device=self.device),
                fired_total=torch.zeros(f, dtype=torch.long, device=self.device),
                usage=torch.zeros(f, dtype=torch.float32, device=self.device),
            ))
            if cfg.compile:
                sae.compile_dense_parts()
            slots[-1].step_fn = sae.training_step
        return slots

    def k_aux_for(self, slot: Slot) -> int:
        return min(self.cfg.k_aux or max(1, slot.sae.d_in // 2), slot.sae.num_features)

    def _init_sample(self) -> dict[str, Tensor]:
        """The first tokens of epoch 0 (the same on every rank), scaled: b_dec's starting point."""
        n = self.cfg.init_sample_tokens
        parts: dict[str, list[Tensor]] = {h: [] for h in self.hooks}
        got = 0
        it = self.source.batches(self.hooks, self.cfg.batch_size, shuffle=True, seed=self.cfg.seed, epoch=0,
                                 split="train", heldout_fraction=self.cfg.heldout_fraction)
        for batch in it:
            for h in self.hooks:
                parts[h].append(batch[h].float())
            got += next(iter(batch.values())).shape[0]
            if got >= n:
                break
        if hasattr(it, "close"):
            it.close()
        return {h: torch.cat(v)[:n] * self.scales[h] for h, v in parts.items()}

    @torch.no_grad()
    def _initialise(self) -> None:
        how = self.cfg.init_b_dec
        sample = self._init_sample()
        if how != "zeros":
            centres: dict[str, Tensor] = {}
            for h, x in sample.items():
                centres[h] = geometric_median(x) if how == "geometric_median" else x.mean(0)
            for s in self.slots:
                s.sae.b_dec.copy_(centres[s.hook].to(self.device))
        for s in self.slots:
            s.sae.init_from_sample(sample[s.hook].to(self.device))
        for s in self.slots:  # identical start on every rank, whatever each computed
            for t in list(s.sae.parameters()) + list(s.sae.buffers()):
                self.dist.broadcast_(t.data)

    # ------------------------------------------------------------------ checkpoints

    def _run_record(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "config": config_to_dict(self.cfg),
            "resolved": {
                "hooks": self.hooks, "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
                "tokens_per_step": self.cfg.batch_size, "dead_tokens": self.dead_tokens,
                "matmul_dtype": str(self.matmul_dtype or torch.float32).replace("torch.", ""),
                "input_scales": self.scales, "world_size": self.dist.world_size, "device": str(self.device),
                "threshold_ema": self.threshold_ema, "usage_decay": self.usage_decay,
            },
            "saes": [
                {"name": s.name, "hook": s.hook, "architecture": s.sae.architecture, "k": s.sae.cfg.k,
                 "num_features": s.sae.num_features, "lr": s.lr, "aux_loss": s.aux, "k_aux": self.k_aux_for(s)}
                for s in self.slots
            ],
        }

    def checkpoint(self) -> Path | None:
        """Write the trainer state (rank 0 only; all ranks hold the same state)."""
        path = None
        if self.dist.is_main:
            tensors = []
            for s in self.slots:
                t = {f"sae.{k}": v for k, v in s.sae.state_dict().items()}
                t.update(flatten_optimizer(s.opt, s.param_names))
                t.update({"health.since_fired": s.since_fired, "health.fired_total": s.fired_total,
                          "health.usage": s.usage, "health.usage_steps": torch.tensor(s.usage_seen)})
                tensors.append(t)
            state = {"format": STATE_FORMAT, "step": self.step, "tokens": self.tokens, "elapsed": self.elapsed,
                     "config": config_to_dict(self.cfg), "saes": [s.name for s in self.slots],
                     # Metric sums of the current logging window, so a resumed run logs the same lines.
                     "windows": [window_to_floats(s.window) for s in self.slots]}
            path = save_checkpoint(self.out, self.step, state, tensors)
        self.dist.barrier()
        return path

    def _maybe_resume(self) -> bool:
        ckpt = latest_checkpoint(self.out)
        if ckpt is None:
            return False
        if not self.cfg.resume:
            raise WorkbenchError(
                f"{self.out} already holds a run (checkpoint {ckpt.name}); pass --resume to continue it, "
                f"or choose another --out"
            )
        state, tensors = load_checkpoint(ckpt, len(self.slots))
        saved, now = state["config"], config_to_dict(self.cfg)
        diff = sorted(k for k in set(saved) | set(now) if k not in RESUMABLE_FIELDS and saved.get(k) != now.get(k))
        if diff:
            shown = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in diff)
            raise WorkbenchError(f"cannot resume {self.out}: the run config differs ({shown}); use another --out")
        if state["saes"] != [s.name for s in self.slots]:
            raise WorkbenchError(f"cannot resume {self.out}: it trains {state['saes']}, this run {[s.name for s in self.slots]}")
        for s, t in zip(self.slots, tensors):
            sd = {k[4:]: v for k, v in t.items() if k.startswith("sae.")}
            own = s.sae.state_dict()
            for k, v in sd.items():
                if k in own and own[k].shape != v.shape:
                    raise WorkbenchError(
                        f"cannot resume {s.name}: checkpoint tensor {k} has shape {tuple(v.shape)}, the SAE "
                        f"{tuple(own[k].shape)} (d_model {s.sae.d_in} of {s.hook} in this cache)"
                    )
            s.sae.load_state_dict({k: v.to(self.device) for k, v in sd.items()})
            restore_optimizer(s.opt, s.param_names, t)
            s.since_fired.copy_(t["health.since_fired"])
            s.fired_total.copy_(t["health.fired_total"])
            s.usage.copy_(t["health.usage"])
            s.usage_seen = int(t["health.usage_steps"])
        for s, w in zip(self.slots, state.get("windows", [{}] * len(self.slots))):
            s.window = dict(w)
        self.step, self.tokens, self.elapsed = int(state["step"]), int(state["tokens"]), float(state["elapsed"])
        if self.dist.is_main:
            truncate_metrics(self.out / METRICS_FILE, self.step)
        log.info("resuming %s from step %d (%s tokens)", self.out, self.step, f"{self.tokens:,}")
        return True

    # ------------------------------------------------------------------ training

    def batches(self):
        """Global batches from the current step on, epoch after epoch, this rank's slice of each."""
        step = self.step
        while step < self.total_steps:
            epoch, start = divmod(step, self.steps_per_epoch)
            it = self.source.batches(
                self.hooks, self.cfg.batch_size, shuffle=True, seed=self.cfg.seed, epoch=epoch,
                split="train", heldout_fraction=self.cfg.heldout_fraction, start_batch=start,
                rank=self.dist.rank, world_size=self.dist.world_size,
            )
            for batch in it:
                yield batch
                step += 1
                if step >= self.total_steps or step % self.steps_per_epoch == 0:
                    break
            if hasattr(it, "close"):
                it.close()

    def sparsity_coef(self, sae: SparseAutoencoder) -> float:
        """The penalty coefficient of `sae`'s architecture at this step (0 without a penalty), warm-up applied."""
        penalty = type(sae).penalty
        base = float(getattr(self.cfg, penalty.coef_field)) if penalty is not None else 0.0
        warm = int(self.cfg.sparsity_warmup_fraction * self.total_steps)
        return base * min(1.0, (self.step + 1) / warm) if warm > 0 else base

    def lr_factor(self) -> float:
        warm = int(round(self.cfg.warmup_fraction * self.total_steps))
        decay = int(round(self.cfg.decay_fraction * self.total_steps))
        return lr_multiplier(self.step, self.total_steps, warm, decay, self.cfg.decay)

    def _sync_grads(self, slot: Slot) -> None:
        if not self.dist.enabled:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in slot.params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.dist.reduce(flat, "sum")
        off = 0
        for p, g in zip(slot.params, grads):
            n = g.numel()
            p.grad = flat[off:off + n].view_as(p)
            off += n

    def train_step(self, batch: dict[str, Tensor]) -> None:
        xs, denoms, counts = {}, {}, {}
        for h in self.hooks:
            x = batch[h].to(self.device, torch.float32, non_blocking=True)
            if self.scales[h] != 1.0:
                x = x * self.scales[h]
            sums = self.dist.reduce(moment_sums(x), "sum")
            # every rank holds batch_size / world_size rows (the reader drops partial batches): no host sync
            xs[h], denoms[h], counts[h] = x, variance_from_sums(sums).to(torch.float32), x.shape[0] * self.dist.world_size
        mult = self.lr_factor()
        for s in self.slots:
            n = counts[s.hook]
            ready = self.tokens >= self.dead_tokens
            aux = s.aux if (s.aux != "zipf" or ready) else "none"
            dead = torch.nonzero(s.since_fired >= self.dead_tokens).flatten() if s.aux == "auxk" else None
            ctx = StepContext(
                denom=denoms[s.hook], n_tokens=n, step=self.step, total_steps=self.total_steps,
                matmul_dtype=self.matmul_dtype, dead=dead, usage=s.usage, aux_loss=aux, aux_coef=self.cfg.aux_coef,
                k_aux=self.k_aux_for(s), multi_topk=self.cfg.multi_topk, sparsity_coef=self.sparsity_coef(s.sae),
                zipf_exponent=self.cfg.zipf_exponent, threshold_ema=self.threshold_ema, reduce=self.dist.reduce,
            )
            out = s.step_fn(xs[s.hook], ctx)
            s.opt.zero_grad(set_to_none=True)
            out.loss.backward()
            self._sync_grads(s)
            s.sae.project_decoder_grad()
            if self.cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(s.params, self.cfg.grad_clip, foreach=self.device.type != "cpu" or None)
            for g in s.opt.param_groups:
                g["lr"] = s.lr * mult
            s.opt.step()
            s.sae.normalize_decoder()
            self._update_health(s, out, n, denoms[s.hook], s.lr * mult)

    @torch.no_grad()
    def _update_health(self, s: Slot, out, n: int, denom: Tensor, lr: float) -> None:
        names = sorted(out.terms)
        f = s.sae.num_features
        packed = torch.cat([out.fired.to(torch.float64), out.sse.view(1).double(),
                            *[out.terms[k].view(1).double() for k in names]])
        self.dist.reduce(packed, "sum")
        fired = packed[:f]
        s.since_fired = torch.where(fired > 0, torch.zeros_like(s.since_fired), s.since_fired + n)
        s.fired_total += fired.long()
        rate = (fired / n).to(torch.float32)
        if s.usage_seen == 0:
            s.usage.copy_(rate)
        else:
            s.usage.mul_(self.usage_decay).add_(rate, alpha=1 - self.usage_decay)
        s.usage_seen += 1
        # Window sums stay on the device until a log line needs them (no host sync per step on GPUs).
        w = s.window
        w["steps"] = w.get("steps", 0) + 1
        add = {"sse": packed[f], "denom": denom.double(), "l0": fired.sum() / n,
               **{k: packed[f + 1 + i] for i, k in enumerate(names)}}
        for k, v in add.items():
            w[k] = w[k] + v if k in w else v.clone()
        w["lr"] = lr

    def dead_fraction(self, s: Slot) -> float:
        return float((s.since_fired >= self.dead_tokens).float().mean())

    def _log(self, tok_per_s: float, bar: tqdm | None) -> None:
        lines = []
        for s in self.slots:
            w = window_to_floats(s.window)
            if not w.get("steps"):
                continue
            m = {"step": self.step, "tokens": self.tokens, "sae": s.name,
                 "fvu": w["sse"] / max(w["denom"], 1e-30), "l0": w["l0"] / w["steps"],
                 "dead_pct": 100 * self.dead_fraction(s), "lr": w["lr"], "tokens_per_s": tok_per_s}
            for k in sorted(w):
                if k not in ("steps", "sse", "denom", "l0", "lr"):
                    m[k] = w[k] / w["steps"]
            s.last_metrics = m
            s.window = {}
            lines.append(json.dumps(m, sort_keys=True))
        if self.dist.is_main and lines:
            with open(self.out / METRICS_FILE, "a") as fh:
                fh.write("\n".join(lines) + "\n")
        if bar is not None and self.slots[0].last_metrics:
            m = self.slots[0].last_metrics
            post = {"fvu": f"{m['fvu']:.4f}", "L0": f"{m['l0']:.1f}", "dead": f"{m['dead_pct']:.1f}%"}
            if len(self.slots) > 1:
                post["saes"] = len(self.slots)
            bar.set_postfix(post, refresh=False)

    def train(self) -> dict[str, Any]:
        """Train to the end (or continue a resumed run), evaluate, save; returns the summary."""
        self.out.mkdir(parents=True, exist_ok=True)
        b = self.cfg.batch_size
        bar = None
        if self.cfg.progress and self.dist.is_main:
            bar = tqdm(total=self.total_steps * b, initial=self.tokens, unit="tok", unit_scale=True,
                       desc=f"sae train ({len(self.slots)} SAE{'s' if len(self.slots) > 1 else ''})", dynamic_ncols=True)
        t_start = t_log = time.perf_counter()
        tokens_at_log = tokens_at_start = self.tokens
        try:
            for batch in self.batches():
                for s in self.slots:
                    s.sae.train()
                self.train_step(batch)
                self.step += 1
                self.tokens += b
                now = time.perf_counter()
                if bar is not None:
                    bar.update(b)
                if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
                    self._log((self.tokens - tokens_at_log) / max(now - t_log, 1e-9), bar)
                    t_log, tokens_at_log = now, self.tokens
                if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0 and self.step < self.total_steps:
                    self.elapsed += now - t_start
                    self.session_time += now - t_start
                    t_start = now
                    self.checkpoint()
                if self.callback is not None:
                    self.callback(self, self.step)
        finally:
            now = time.perf_counter()
            self.elapsed += now - t_start
            self.session_time += now - t_start
            if bar is not None:
                bar.close()
        self.session_tokens = self.tokens - tokens_at_start
        if self.step > 0:
            self.checkpoint()
        return self.finish()

    # ------------------------------------------------------------------ evaluation and saving

    def folded(self, s: Slot) -> SparseAutoencoder:
        """A copy of the SAE that takes raw activations (input scale folded in), in eval mode."""
        sae = copy.deepcopy(s.sae)
        sae.fold_input_scale(self.scales[s.hook])
        train_record = {**config_to_dict(self.cfg), "lr": s.lr, "aux_loss": s.aux, "k_aux": self.k_aux_for(s),
                        "dead_tokens": self.dead_tokens, "steps": self.step, "tokens": self.tokens,
                        "matmul_dtype": str(self.matmul_dtype or torch.float32).replace("torch.", "")}
        sae.cfg = dataclasses.replace(sae.cfg, train=train_record)
        return sae.eval()

    @torch.no_grad()
    def evaluate(self, saes: list[SparseAutoencoder]) -> list[dict[str, Any]]:
        """Held-out FVU (against the held-out set's own mean), L0, and features never fired there."""
        b = self.cfg.batch_size
        res = [dict(sse=0.0, nnz=0, fired=torch.zeros(s.num_features, dtype=torch.long, device=self.device),
                    sse_batch=0.0, nnz_batch=0) for s in saes]
        sums = {h: None for h in self.hooks}
        n = 0
        nb = self.source.num_batches(b, split="heldout", heldout_fraction=self.cfg.heldout_fraction, drop_last=False)
        if nb == 0:
            return [{} for _ in saes]
        it = self.source.batches(self.hooks, b, shuffle=False, split="heldout",
                                 heldout_fraction=self.cfg.heldout_fraction, drop_last=False)
        for batch in it:
            for h in self.hooks:
                x = batch[h].to(self.device, torch.float32)
                m = moment_sums(x)
                sums[h] = m if sums[h] is None else sums[h] + m
            bn = next(iter(batch.values())).shape[0]
            for sae, r in zip(saes, res):
                x = batch[sae.cfg.hook].to(self.device, torch.float32)
                codes = sae.encode(x)
                r["sse"] += float((sae.decode(codes) - x).pow(2).sum())
                pos = codes.vals > 0
                r["nnz"] += int(pos.sum())
                r["fired"] += torch.bincount(codes.cols[pos], minlength=sae.num_features)
                if sae.threshold_inference:
                    cb = sae.encode_batch(x)
                    r["sse_batch"] += float((sae.decode(cb) - x).pow(2).sum())
                    r["nnz_batch"] += int((cb.vals > 0).sum())
            n += bn
            if self.cfg.eval_tokens and n >= self.cfg.eval_tokens:
                break
        if hasattr(it, "close"):
            it.close()
        out = []
        for sae, r in zip(saes, res):
            var = float(variance_from_sums(sums[sae.cfg.hook]))
            m = {"heldout_tokens": n, "heldout_fvu": r["sse"] / var, "heldout_l0": r["nnz"] / n,
                 "heldout_unfired_pct": 100 * float((r["fired"] == 0).float().mean())}
            if sae.threshold_inference:
                m["heldout_fvu_batch_rule"] = r["sse_batch"] / var
                m["heldout_l0_batch_rule"] = r["nnz_batch"] / n
            out.append(m)
        return out

    def finish(self) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        if self.dist.is_main:
            folded = [self.folded(s) for s in self.slots]
            evals = self.evaluate(folded)
            rows = []
            for s, sae, ev in zip(self.slots, folded, evals):
                d = self.out / s.name
                stats = {"firing_counts": s.fired_total.cpu(), "tokens_since_fired": s.since_fired.cpu(),
                         "tokens": torch.tensor([self.tokens])}
                save_sae(sae, d, stats)
                dead = int((s.since_fired >= self.dead_tokens).sum())
                row = {"name": s.name, "dir": str(d), "hook": s.hook, "architecture": sae.architecture,
                       "k": sae.cfg.k, "num_features": sae.num_features, "dead_features": dead,
                       "dead_pct": 100 * dead / sae.num_features, "train_fvu": s.last_metrics.get("fvu"),
                       "train_l0": s.last_metrics.get("l0"), **ev}
                rows.append(row)
            summary = {"out": str(self.out), "steps": self.step, "tokens": self.tokens, "elapsed_s": self.elapsed,
                       "tokens_per_s": self.tokens / max(self.elapsed, 1e-9),
                       "session_tokens_per_s": self.session_tokens / max(self.session_time, 1e-9),
                       "dead_tokens": self.dead_tokens,
                       "device": str(self.device), "world_size": self.dist.world_size,
                       "matmul_dtype": str(self.matmul_dtype or torch.float32).replace("torch.", ""), "saes": rows}
            atomic_write_json(self.out / SUMMARY_FILE, summary)
        self.dist.barrier()
        return summary

    def close(self) -> None:
        self.dist.close()


def make_adam(params: list[Tensor], lr: float, betas: tuple[float, ...], eps: float,
              device: torch.device) -> torch.optim.Optimizer:
    """Adam, fused where torch has a fused kernel for the device (one pass over all parameters)."""
    kw: dict[str, Any] = dict(lr=lr, betas=tuple(betas), eps=eps)
    try:
        return torch.optim.Adam(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, **kw)


def window_to_floats(w: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in w.items()}


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines a killed run wrote after its last checkpoint (they will be written again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut off by the kill
    from workbench.io import atomic_write_bytes

    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())


def train(cfg: TrainConfig, source: ActivationSource | None = None, *,
          callback: Callable[[Trainer, int], None] | None = None) -> dict[str, Any]:
    """Train every SAE `cfg` describes; returns the summary (also written to <out>/summary.json)."""
    trainer = Trainer(cfg, source, callback=callback)
    try:
        return trainer.train()
    finally:
        trainer.close()
