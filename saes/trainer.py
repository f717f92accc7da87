"""The trainer: one pass over the cache feeds every SAE of the run.

Per step: read one global batch (all hook points at once), scale it, compute each hook's batch
variance once (over all ranks), then for every SAE: training step -> backward -> sum gradients
over ranks -> remove the decoder gradient's parallel part -> clip -> Adam with the scheduled
rate -> renormalise decoder rows -> firing statistics. Metrics go to metrics.jsonl and the
progress bar every `log_every` steps; checkpoints (atomic, see saes.checkpoint) every
`checkpoint_every` steps; at the end the held-out split is evaluated, the input scale folded
into the weights, and each SAE saved in the common format with a summary.

The trainer is the loop and the order of things; the pieces live beside it: `saes.slot` (one
SAE with its optimiser and health statistics), `saes.run_log` (metric windows, metrics.jsonl,
the summary), `saes.checkpoint` (state packing and files), `saes.heldout` (the evaluation,
reusable on its own), `saes.run_output` (folding, evaluating and saving the SAEs at the end).
What differs between architectures is asked of their classes.

Resuming continues from the last checkpoint with the same result as an uninterrupted run: the
data order is a function of (seed, epoch, batch index) (for a stream, `harvesting.shuffle_buffer`, of the shuffle
buffer's state, which is checkpointed too), and every piece of state that a step
reads (weights, Adam moments, thresholds, firing statistics, step count) is in the checkpoint.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saes.base import SparseAutoencoder, StepContext
from saes.checkpoint import (
    latest_checkpoint,
    load_stream_state,
    pack_slot,
    resumable_state,
    save_checkpoint,
    save_stream_state,
    unpack_slot,
)
from saes.config import TrainConfig
from saes.data import ActivationSource, open_source
from saes.distributed import DistContext, setup_distributed
from saes.feature_parallel import FeatureParallel, check_layout, feature_layout
from saes.feature_parallel_output import save_run_sharded, write_checkpoint_shards
from saes.guards import finite_flags, raise_if_not_finite, run_identity
from saes.kernels import deterministic as deterministic_kernels
from saes.initialise import init_sample, initialise
from saes.losses import lr_multiplier, moment_sums, variance_from_sums
from saes.registry import build_sae, resolve_aux_loss
from saes.run_plan import plan_run, resolve_matmul_dtype
from saes.run_log import append_metrics, progress_postfix, truncate_metrics, window_metrics, window_to_floats
from saes.run_output import evaluate_saes, folded_sae, save_run
from saes.shard_files import read_rows
from saes.slot import Slot, make_adam, width_scaled_lr
from saes.whitening import fit_run_whitening, whiten_sample
from workbench.config import config_to_dict, save_config
from workbench.device import resolve_device
from workbench.io import atomic_write_json

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
STATE_FORMAT = 1


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
        # on a GPU each step ends in a host sync, so a gather in this thread would stall the device;
        # on a CPU the step already uses every core and a gather thread only competes with it
        self.prefetch = cfg.prefetch if cfg.prefetch >= 0 else (2 if self.device.type == "cuda" else 0)
        self.dist: DistContext = setup_distributed(self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        # the cache reader, or a stream (the model's forward passes, or a cache in harvest order) that the
        # trainer draws from through the shuffle buffer the stream gives it (harvesting.shuffle_buffer)
        self.source = source if source is not None else open_source(cfg, self.device)
        self.identity = run_identity(self.source, self.device)
        # Bit-identical kernels whenever the run may be resumed (see TrainConfig.deterministic).
        self.deterministic = cfg.deterministic == "on" or (cfg.deterministic == "auto" and cfg.checkpoint_every > 0)
        # Feature parallel (saes.feature_parallel): replicas of N ranks, each rank holding F/N features;
        # the data is split over the replicas. Otherwise every rank is a replica of its own.
        self.layout: FeatureParallel | None = feature_layout(cfg.feature_parallel, self.dist)
        self.data: DistContext = self.layout.data if self.layout is not None else self.dist
        self.buffer: Any = None
        if hasattr(self.source, "shuffle_buffer"):  # a stream: each data-parallel rank streams its own share
            self.source.shard(self.data.rank, self.data.world_size)
            self.buffer = self.source.shuffle_buffer(cfg.shuffle_buffer, cfg.batch_size // self.data.world_size, cfg.seed)
        self.plan = plan = plan_run(cfg, self.source, self.data.world_size)
        if self.layout is not None:
            check_layout(self.layout.n, plan.saes)
        self.hooks, self.out, self.scales = plan.hooks, plan.out, plan.scales
        self.steps_per_epoch, self.total_steps = plan.steps_per_epoch, plan.total_steps
        self.dead_tokens, self.usage_decay, self.threshold_ema = plan.dead_tokens, plan.usage_decay, plan.threshold_ema
        self.matmul_dtype = resolve_matmul_dtype(cfg.precision, self.device)
        self.step = 0
        self.tokens = 0
        self.elapsed = 0.0
        self.session_tokens = 0  # tokens and seconds trained by this process (not counting a resumed part)
        self.session_time = 0.0
        self.slots = self._build_slots()
        resumed = self._maybe_resume()
        fit_on_init = cfg.whiten != "none" and cfg.whiten_source == "init"
        sample = init_sample(self.source, cfg, self.hooks, self.scales) if not resumed or fit_on_init else None
        # --whiten: fitted before anything reads whitened rows; a resumed run refits the same map (same rows)
        self.whitening = fit_run_whitening(cfg, self.source, self.hooks, self.scales, sample)
        if sample is not None and not resumed:
            initialise(self.slots, whiten_sample(sample, self.whitening), cfg.init_b_dec, self.device,
                       self.dist.broadcast_ if self.layout is None else self.layout.broadcaster(self.slots, self.dist))
        if self.dist.is_main:
            atomic_write_json(self.out / RUN_FILE, self._run_record())
            save_config(cfg, self.out / "train_config.json")

    # ------------------------------------------------------------------ setup

    def _build_slots(self) -> list[Slot]:
        cfg = self.cfg
        slots = []
        for name, scfg in self.plan.saes:
            gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
            # under feature parallelism only this rank's rows of that SAE (saes.feature_parallel)
            sae = (build_sae(scfg, device=self.device, generator=gen) if self.layout is None
                   else self.layout.build(scfg, gen, self.device))
            named = [(n, p) for n, p in sae.named_parameters() if p.requires_grad]
            lr = cfg.lr or width_scaled_lr(scfg.num_features)
            opt = make_adam([p for _, p in named], lr, cfg.adam_betas, cfg.adam_eps, self.device)
            aux = resolve_aux_loss(type(sae), cfg.aux_loss)
            if cfg.compile:
                sae.compile_dense_parts()
            slots.append(Slot.new(name, scfg.hook, sae, opt, [n for n, _ in named], lr, aux, self.device))
            if self.layout is not None:
                self.layout.adopt(slots[-1])
        return slots

    def _matmul_dtype_name(self) -> str:
        return str(self.matmul_dtype or torch.float32).replace("torch.", "")

    def k_aux_for(self, slot: Slot) -> int:
        return min(self.cfg.k_aux or max(1, slot.sae.d_in // 2), slot.sae.num_features)

    # ------------------------------------------------------------------ checkpoints

    def _run_record(self) -> dict[str, Any]:
        return self.plan.record(self.cfg, STATE_FORMAT, matmul_dtype=self._matmul_dtype_name(), device=str(self.device),
                                world_size=self.dist.world_size, saes=[
            {"name": s.name, "hook": s.hook, "architecture": s.sae.architecture, "k": s.sae.cfg.k,
             "num_features": s.sae.num_features, "lr": s.lr, "aux_loss": s.aux, "k_aux": self.k_aux_for(s)}
            for s in self.slots])

    def checkpoint(self) -> Path | None:
        """Write the trainer state (rank 0; under feature parallelism each SAE's file from every rank's rows)."""
        path = None
        if self.layout is not None:  # each SAE's file written from the ranks' rows (no rank holds a whole SAE)
            write_checkpoint_shards(self.layout, self.out, self.step, self.slots)
        if self.buffer is not None:  # every rank's buffer is in the step directory before latest.json names it
            save_stream_state(self.out, self.step, self.dist.rank, self.buffer.state())
            self.dist.barrier()
        if self.dist.is_main:
            tensors = [pack_slot(s) for s in self.slots] if self.layout is None else []
            state = {"format": STATE_FORMAT, "step": self.step, "tokens": self.tokens, "elapsed": self.elapsed,
                     "config": config_to_dict(self.cfg), "saes": [s.name for s in self.slots], "identity": self.identity,
                     # Metric sums of the current logging window, so a resumed run logs the same lines.
                     "windows": [window_to_floats(s.window) for s in self.slots]}
            path = save_checkpoint(self.out, self.step, state, tensors)
        self.dist.barrier()
        return path

    def _maybe_resume(self) -> bool:
        load = None if self.layout is None else (lambda f: read_rows(f, self.layout.rows_of))  # this rank's rows
        found = resumable_state(self.out, self.cfg, self.identity, [s.name for s in self.slots], load)
        if found is None:
            return False
        state, tensors = found
        for s, t in zip(self.slots, tensors):
            unpack_slot(s, t, self.device)
        for s, w in zip(self.slots, state.get("windows", [{}] * len(self.slots))):
            s.window = dict(w)
        if self.buffer is not None:  # the stream continues at the same corpus position, buffer and generator
            self.buffer.load_state(load_stream_state(latest_checkpoint(self.out), self.dist.rank))
        self.step, self.tokens, self.elapsed = int(state["step"]), int(state["tokens"]), float(state["elapsed"])
        if self.dist.is_main:
            truncate_metrics(self.out, self.step)
        log.info("resuming %s from step %d (%s tokens)", self.out, self.step, f"{self.tokens:,}")
        return True

    # ------------------------------------------------------------------ training

    def batches(self):
        """Global batches from the current step on, epoch after epoch, this rank's slice of each."""
        step = self.step
        if self.buffer is not None:  # a stream: this rank's batches drawn from its shuffle buffer
            it = self.buffer.batches(self.source.train_chunks(self.buffer.chunks))
            try:
                for batch in it:
                    if step >= self.total_steps:
                        break
                    yield batch
                    step += 1
            finally:
                it.close()
            return
        while step < self.total_steps:
            epoch, start = divmod(step, self.steps_per_epoch)
            it = self.source.batches(
                self.hooks, self.cfg.batch_size, shuffle=True, seed=self.cfg.seed, epoch=epoch,
                split="train", heldout_fraction=self.cfg.heldout_fraction, start_batch=start,
                rank=self.data.rank, world_size=self.data.world_size,
                prefetch=self.prefetch, dtype=None,  # as stored: a half cache's rows are upcast on the device
            )
            try:
                for batch in it:
                    yield batch
                    step += 1
                    if step >= self.total_steps or step % self.steps_per_epoch == 0:
                        break
            finally:  # also when the consumer stops early or raises: no prefetch thread outlives it
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

    def train_step(self, batch: dict[str, Tensor]) -> None:
        xs, denoms, counts = {}, {}, {}
        for h in self.hooks:
            x = batch[h].to(self.device, non_blocking=True).float()  # moved as stored (half: half the bytes), upcast there
            if self.scales[h] != 1.0:
                x = x * self.scales[h]
            if h in self.whitening:
                x = self.whitening[h].apply(x)
            sums = self.data.reduce(moment_sums(x), "sum")
            # every replica holds batch_size / replicas rows (the reader drops partial batches): no host sync
            xs[h], denoms[h], counts[h] = x, variance_from_sums(sums).to(torch.float32), x.shape[0] * self.data.world_size
        mult = self.lr_factor()
        losses, norms = [], []
        for s in self.slots:
            n = counts[s.hook]
            ready = self.tokens >= self.dead_tokens
            aux = s.aux if (s.aux != "zipf" or ready) else "none"
            # only AuxK reads the dead list, and none can be dead before dead_tokens tokens (tokens since a
            # feature fired never exceed the tokens trained): skip its nonzero, a host sync on CUDA, until then
            can_die = s.aux == "auxk" and self.cfg.aux_coef > 0 and self.tokens >= self.dead_tokens
            dead = torch.nonzero(s.since_fired >= self.dead_tokens).flatten() if can_die else None
            ctx = StepContext(
                denom=denoms[s.hook], n_tokens=n, step=self.step, total_steps=self.total_steps,
                matmul_dtype=self.matmul_dtype, dead=dead, usage=s.usage, aux_loss=aux, aux_coef=self.cfg.aux_coef,
                k_aux=self.k_aux_for(s), multi_topk=self.cfg.multi_topk, sparsity_coef=self.sparsity_coef(s.sae),
                zipf_exponent=self.cfg.zipf_exponent, threshold_ema=self.threshold_ema, reduce=self.data.reduce,
            )
            out = s.step_fn(xs[s.hook], ctx)
            s.opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if self.data.enabled:
                s.sum_grads(self.data.reduce)
            s.sae.project_decoder_grad()
            norm = None
            if self.cfg.grad_clip > 0 and self.layout is not None:
                norm = self.layout.clip_grad_norm_(s, self.cfg.grad_clip)
            elif self.cfg.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(s.params, self.cfg.grad_clip, foreach=self.device.type != "cpu" or None)
            losses.append(out.loss)
            norms.append(norm)
            for g in s.opt.param_groups:
                g["lr"] = s.lr * mult
            s.opt.step()
            s.sae.normalize_decoder()
            s.record(out, n, denoms[s.hook], s.lr * mult, self.usage_decay, self.dist.reduce)
        raise_if_not_finite(finite_flags(xs, losses, norms), step=self.step + 1, hooks=self.hooks,
                            saes=[(s.name, s.hook) for s in self.slots], checkpoint=lambda: latest_checkpoint(self.out))

    def dead_fraction(self, s: Slot) -> float:
        return s.dead_fraction(self.dead_tokens)

    def _log(self, tok_per_s: float, bar: tqdm | None) -> None:
        lines = []
        for s in self.slots:
            m = window_metrics(s.window, step=self.step, tokens=self.tokens, sae=s.name,
                               dead_pct=100 * self.dead_fraction(s), tokens_per_s=tok_per_s)
            if m is None:
                continue
            s.last_metrics, s.window = m, {}
            lines.append(m)
        if self.dist.is_main:
            append_metrics(self.out, lines)
        if bar is not None and self.slots[0].last_metrics:
            bar.set_postfix(progress_postfix(self.slots[0].last_metrics, len(self.slots)), refresh=False)

    def train(self) -> dict[str, Any]:
        """Train to the end (or continue a resumed run), evaluate, save; returns the summary."""
        with deterministic_kernels(self.deterministic):
            return self._train()

    def _train(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        b = self.cfg.batch_size
        bar = None
        if self.cfg.progress and self.dist.is_main:
            bar = tqdm(total=self.total_steps * b, initial=self.tokens, unit="tok", unit_scale=True,
                       desc=f"sae train ({len(self.slots)} SAE{'s' if len(self.slots) > 1 else ''})", dynamic_ncols=True)
        t_start = t_log = time.perf_counter()
        tokens_at_log = tokens_at_start = self.tokens
        batches = self.batches()
        try:
            for batch in batches:
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
            batches.close()
            now = time.perf_counter()
            self.elapsed += now - t_start
            self.session_time += now - t_start
            if bar is not None:
                bar.close()
        self.session_tokens = self.tokens - tokens_at_start
        if self.step > 0:
            self.checkpoint()
        return self.finish()

    # ------------------------------------------------------------------ evaluation and saving (saes.run_output)

    def folded(self, s: Slot) -> SparseAutoencoder:
        """A copy of the SAE that takes raw activations (input scale folded in), in eval mode."""
        return folded_sae(self, s)

    def evaluate(self, saes: list[SparseAutoencoder]) -> list[dict[str, Any]]:
        """Held-out metrics of `saes` (see saes.heldout) over this run's held-out split; {} each if it is empty."""
        return evaluate_saes(self, saes)

    def finish(self) -> dict[str, Any]:
        return save_run(self) if self.layout is None else save_run_sharded(self)

    def close(self) -> None:
        self.dist.close()


def train(cfg: TrainConfig, source: ActivationSource | None = None, *,
          callback: Callable[[Trainer, int], None] | None = None) -> dict[str, Any]:
    """Train every SAE `cfg` describes; returns the summary (also written to <out>/summary.json)."""
    trainer = Trainer(cfg, source, callback=callback)
    try:
        return trainer.train()
    finally:
        trainer.close()
