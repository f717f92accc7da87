"""What a feature-parallel run writes, with no rank holding a whole SAE: checkpoints and the saved SAEs.

The files are the ones a one-process run writes (one sae-NNN.safetensors per SAE in a checkpoint,
one SAE directory per SAE at the end), assembled by `saes.shard_files.write_sharded` from every
rank's rows: the first replica's shard group writes (replicas hold the same rows), the run's rank
0 receiving one block at a time. At the end each rank folds the input scale (or whitening map)
into its own rows (both act feature by feature) and the held-out evaluation runs split like the
training step: per-rank top-k candidates merged, the decode summed over the group (the metrics of
`saes.heldout.evaluate_heldout`, for the per-token top-k rule the layout trains).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from saes.base import SparseAutoencoder
from saes.checkpoint import CHECKPOINT_DIR, pack_slot, step_dir_name
from saes.heldout import heldout_metrics, hook_inputs
from saes.run_output import evaluate_saes, folded_sae, save_saes, write_summary
from saes.shard_files import write_sharded
from saes.storage import CFG_FILE, STATS_FILE, WEIGHTS_FILE
from workbench.config import config_to_dict
from workbench.io import atomic_save_safetensors, atomic_write_json

if TYPE_CHECKING:
    from saes.feature_parallel import FeatureParallel
    from saes.trainer import Trainer

# How the saved tensors split across ranks: the axis of the features (W_enc is saved as [d_in, F]).
SAVED_SPLIT = {"W_enc": 1, "b_enc": 0, "W_dec": 0}


def write_checkpoint_shards(layout: "FeatureParallel", run_dir: Path, step: int, slots: list) -> None:
    """Each SAE's checkpoint file of `step` (`saes.checkpoint.pack_slot` of the whole slot), from the rows.

    A collective over the run: the first replica's ranks take part, the others return. The run's
    rank 0 has finished the files when it returns, before it writes trainer.json and latest.json.
    """
    if layout.data.rank != 0:
        return
    d = Path(run_dir) / CHECKPOINT_DIR / step_dir_name(step)
    for i, s in enumerate(slots):
        tensors = pack_slot(s)
        split = {k: 0 for k, t in tensors.items() if layout.rows_of(k, tuple(t.shape)) is not None}
        write_sharded(d / f"sae-{i:03d}.safetensors", tensors, split, layout.features, {"step": str(step)})


def save_sae_shard(layout: "FeatureParallel", sae: SparseAutoencoder, directory: Path,
                   stats: dict[str, Tensor] | None) -> None:
    """`saes.storage.save_sae` of the whole SAE, from every rank of the shard group with its rows of `sae`."""
    if sae.extra_tensors:
        raise NotImplementedError(f"{sae.architecture}: saving split extra tensors {sae.extra_tensors}")
    meta = {"architecture": sae.architecture, "format": "sae-workbench"}  # as save_sae writes them
    write_sharded(directory / WEIGHTS_FILE, sae.weight_tensors(), SAVED_SPLIT, layout.features, meta)
    if layout.features.rank == 0:  # cfg.json last: its presence marks a complete SAE
        if stats is not None:
            atomic_save_safetensors(directory / STATS_FILE, stats, meta)
        atomic_write_json(directory / CFG_FILE, config_to_dict(sae.cfg))


@torch.no_grad()
def evaluate_shards(layout: "FeatureParallel", saes: list[SparseAutoencoder],
                    batches: Iterable[Mapping[str, Tensor] | Tensor], *, device: torch.device,
                    max_tokens: int = 0) -> list[dict[str, Any]]:
    """`saes.heldout.evaluate_heldout` of the whole SAEs, each rank holding its rows of them (a collective
    over the shard group: every rank reads the same batches)."""
    res = [dict(sse=0.0, nnz=0, fired=torch.zeros(s.W_dec.shape[0], dtype=torch.long, device=device)) for s in saes]
    sums: dict[str, Tensor] = {}
    n = 0
    for batch in batches:
        xs = hook_inputs(saes, batch, device, sums)
        for sae, r in zip(saes, res):
            x = xs[sae.cfg.hook]
            lo = layout.bounds(sae.num_features)[0]
            pre = (x - sae.b_dec) @ sae.enc_weight.t() + sae.b_enc
            part, vals, lid = layout.decode_part(pre, layout.merged_topk(pre, sae.cfg.k, lo), sae.W_dec, lo)
            r["sse"] += float((part + sae.b_dec - x).pow(2).sum())
            pos = vals > 0
            r["nnz"] += int(pos.sum())
            r["fired"] += torch.bincount(lid[pos], minlength=sae.W_dec.shape[0])
        n += next(iter(xs.values())).shape[0]
        if max_tokens and n >= max_tokens:
            break
    if n == 0:
        return [{} for _ in saes]
    out = []
    for sae, r in zip(saes, res):
        counts = layout.features.reduce(torch.tensor([r["nnz"], int((r["fired"] == 0).sum())], device=device), "sum")
        out.append(heldout_metrics(n, sums[sae.cfg.hook], r["sse"], int(counts[0]), int(counts[1]), sae.num_features))
    return out


def save_run_sharded(trainer: "Trainer") -> dict[str, Any]:
    """`saes.run_output.save_run` for a feature-parallel run: the first replica folds, evaluates and saves
    every SAE from its rows; rank 0 writes the summary (and any whitening map). A collective."""
    layout = trainer.layout
    assert layout is not None
    summary: dict[str, Any] = {}
    if layout.data.rank == 0:
        folded = [folded_sae(trainer, s) for s in trainer.slots]
        evals = evaluate_saes(trainer, folded, partial(evaluate_shards, layout))
        rows = save_saes(trainer, trainer.slots, folded, evals, partial(save_sae_shard, layout))
        if trainer.dist.is_main:
            summary = write_summary(trainer, rows)
    trainer.dist.barrier()
    return summary
