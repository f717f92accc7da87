"""What a training run leaves behind: each SAE folded back to raw activations (input scale or
whitening map folded into its weights, its training record attached), evaluated on the held-out
split, saved with its firing statistics, and the run's summary.

Functions of the `Trainer` (they read its slots, scales, whitening maps and counters), kept apart
from the training loop because they run once, on rank 0, after it.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from saes.base import SparseAutoencoder
from saes.heldout import evaluate_heldout
from saes.run_log import SUMMARY_FILE, run_summary, sae_row
from saes.slot import Slot
from saes.storage import save_sae
from saes.whitening import fold_whitening
from workbench.config import config_to_dict
from workbench.io import atomic_save_safetensors, atomic_write_json

if TYPE_CHECKING:
    from saes.trainer import Trainer


def folded_sae(trainer: "Trainer", s: Slot) -> SparseAutoencoder:
    """A copy of the SAE that takes raw activations (input scale folded in), in eval mode."""
    sae = copy.deepcopy(s.sae)
    if s.hook in trainer.whitening:  # the map already takes raw x: the scale is folded in with it
        fold_whitening(sae, trainer.whitening[s.hook].rescaled(trainer.scales[s.hook]))
    else:
        sae.fold_input_scale(trainer.scales[s.hook])
    train_record = {**config_to_dict(trainer.cfg), "lr": s.lr, "aux_loss": s.aux, "k_aux": trainer.k_aux_for(s),
                    "dead_tokens": trainer.dead_tokens, "steps": trainer.step, "tokens": trainer.tokens,
                    "matmul_dtype": trainer._matmul_dtype_name(),
                    # the cache's content hash: `sae eval` tells its own training cache from another
                    # one by it, even after the cache moved or another harvest took its path
                    "cache_identity": trainer.identity.get("data")}
    sae.cfg = dataclasses.replace(sae.cfg, train=train_record)
    return sae.eval()


def evaluate_saes(trainer: "Trainer", saes: list[SparseAutoencoder],
                  evaluate: Callable[..., list[dict[str, Any]]] = evaluate_heldout) -> list[dict[str, Any]]:
    """Held-out metrics of `saes` (see saes.heldout) over this run's held-out split; {} each if it is empty.

    `evaluate(saes, batches, device=, max_tokens=)` computes them: `evaluate_heldout`, or the
    feature-parallel split of it (`saes.feature_parallel_output.evaluate_shards`)."""
    b, frac = trainer.cfg.batch_size, trainer.cfg.heldout_fraction
    if trainer.source.num_batches(b, split="heldout", heldout_fraction=frac, drop_last=False) == 0:
        return [{} for _ in saes]
    it = trainer.source.batches(trainer.hooks, b, shuffle=False, split="heldout", heldout_fraction=frac, drop_last=False)
    try:
        return evaluate(saes, it, device=trainer.device, max_tokens=trainer.cfg.eval_tokens)
    finally:
        if hasattr(it, "close"):
            it.close()


def save_saes(trainer: "Trainer", slots: list[Slot], folded: list[SparseAutoencoder], evals: list[dict[str, Any]],
              save: Callable[[SparseAutoencoder, Path, dict[str, Tensor]], None] = save_sae) -> list[dict[str, Any]]:
    """Each folded SAE saved by `save(sae, directory, stats)` with its slot's firing statistics; the
    summary's row of each. `save` is `saes.storage.save_sae`, or the feature-parallel writer of the
    rows (`saes.feature_parallel_output.save_sae_shard`)."""
    rows = []
    for s, sae, ev in zip(slots, folded, evals):
        d = trainer.out / s.name
        stats = {"firing_counts": s.fired_total.cpu(), "tokens_since_fired": s.since_fired.cpu(),
                 "tokens": torch.tensor([trainer.tokens])}
        save(sae, d, stats)
        rows.append(sae_row(name=s.name, directory=d, hook=s.hook, architecture=sae.architecture, k=sae.cfg.k,
                            num_features=sae.num_features,
                            dead_features=int((s.since_fired >= trainer.dead_tokens).sum()),
                            last_metrics=s.last_metrics, heldout=ev))
    return rows


def write_summary(trainer: "Trainer", rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's summary (written to SUMMARY_FILE and returned) and any whitening map."""
    summary = run_summary(out=trainer.out, steps=trainer.step, tokens=trainer.tokens, elapsed=trainer.elapsed,
                          session_tokens=trainer.session_tokens, session_time=trainer.session_time,
                          dead_tokens=trainer.dead_tokens, device=str(trainer.device),
                          world_size=trainer.dist.world_size, matmul_dtype=trainer._matmul_dtype_name(),
                          rows=rows)
    atomic_write_json(trainer.out / SUMMARY_FILE, summary)
    for h, w in trainer.whitening.items():  # the map in raw units, for the record (the SAEs do not need it)
        atomic_save_safetensors(trainer.out / "whitening" / f"{h}.safetensors", w.rescaled(trainer.scales[h]).tensors(),
                                {"kind": w.kind, "tokens": str(w.tokens), "source": trainer.cfg.whiten_source})
    return summary


def save_run(trainer: "Trainer") -> dict[str, Any]:
    """Rank 0 folds, evaluates and saves every SAE and writes the summary (and any whitening map)."""
    summary: dict[str, Any] = {}
    slots = trainer.slots  # whole SAEs: a feature-parallel run saves through saes.feature_parallel_output
    if trainer.dist.is_main:
        folded = [folded_sae(trainer, s) for s in slots]
        summary = write_summary(trainer, save_saes(trainer, slots, folded, evaluate_saes(trainer, folded)))
    trainer.dist.barrier()
    return summary
