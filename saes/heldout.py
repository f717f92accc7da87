"""Held-out evaluation of SAEs: FVU, L0 and unfired features, under every inference rule they have.

The trainer reports these at the end of a run, and evaluation code reuses the same function so
the numbers mean the same everywhere:

    from saes.heldout import evaluate_heldout
    metrics = evaluate_heldout([sae_a, sae_b], reader.batches(hooks, 4096, shuffle=False, split="heldout",
                                                              drop_last=False), device="cuda")

`batches` yields `{hook: [n, d_in]}` dicts (each SAE reads its own `cfg.hook`; several SAEs on
several hooks share one read) or plain `[n, d_in]` tensors (every SAE reads them). FVU is
against the evaluated tokens' own mean (sum ||x - x_hat||^2 / sum ||x - mean x||^2 over all of
them), L0 the mean number of positive codes per token, `heldout_unfired_pct` the share of
features positive on none of the tokens. SAEs with a batch rule besides their threshold rule
(`threshold_inference`) also get `heldout_fvu_batch_rule` / `heldout_l0_batch_rule`: that rule
applied to each batch as given, so those two depend on the batch size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from saes.base import SparseAutoencoder
from saes.losses import moment_sums, variance_from_sums


def hook_inputs(saes: Sequence[SparseAutoencoder], batch: Mapping[str, Tensor] | Tensor, device: torch.device,
                sums: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each hook's activations in `batch` that `saes` read, as float32 on `device`, read once per hook;
    adds their moment sums into `sums[hook]` (the FVU's denominator). Shared with
    `saes.feature_parallel_output.evaluate_shards`, so the split evaluation reads the same inputs."""
    xs: dict[str, Tensor] = {}
    for sae in saes:
        h = sae.cfg.hook
        if h not in xs:
            x = (batch if isinstance(batch, Tensor) else batch[h]).to(device, torch.float32)
            m = moment_sums(x)
            sums[h] = m if h not in sums else sums[h] + m
            xs[h] = x
    return xs


@torch.no_grad()
def evaluate_heldout(saes: Sequence[SparseAutoencoder], batches: Iterable[Mapping[str, Tensor] | Tensor], *,
                     device: torch.device | str | None = None, max_tokens: int = 0) -> list[dict[str, Any]]:
    """One metrics dict per SAE (empty when `batches` held no tokens); stops after the batch that
    reaches `max_tokens` (0 = read everything). Runs on `device` (default: the first SAE's)."""
    if not saes:
        return []
    dev = torch.device(device) if device is not None else saes[0].W_dec.device
    res = [dict(sse=0.0, nnz=0, fired=torch.zeros(s.num_features, dtype=torch.long, device=dev),
                sse_batch=0.0, nnz_batch=0) for s in saes]
    sums: dict[str, Tensor] = {}
    n = 0
    for batch in batches:
        xs = hook_inputs(saes, batch, dev, sums)
        bn = next(iter(xs.values())).shape[0]
        for sae, r in zip(saes, res):
            x = xs[sae.cfg.hook]
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
        if max_tokens and n >= max_tokens:
            break
    if n == 0:
        return [{} for _ in saes]
    return [heldout_metrics(n, sums[sae.cfg.hook], r["sse"], r["nnz"], int((r["fired"] == 0).sum()), sae.num_features,
                            batch_rule=(r["sse_batch"], r["nnz_batch"]) if sae.threshold_inference else None)
            for sae, r in zip(saes, res)]


def heldout_metrics(n: int, sums: Tensor, sse: float, nnz: int, unfired: int, num_features: int, *,
                    batch_rule: tuple[float, int] | None = None) -> dict[str, Any]:
    """One SAE's metrics dict from its totals over `n` tokens: the inputs' `moment_sums`, the squared
    error, the positive codes, the features that never fired, and (`batch_rule`) the batch rule's
    squared error and positive codes. Shared with `saes.feature_parallel_output.evaluate_shards`,
    whose totals are summed over ranks, so both report the same numbers."""
    var = float(variance_from_sums(sums))
    m = {"heldout_tokens": n, "heldout_fvu": sse / var, "heldout_l0": nnz / n,
         "heldout_unfired_pct": 100 * unfired / num_features}
    if batch_rule is not None:
        m["heldout_fvu_batch_rule"] = batch_rule[0] / var
        m["heldout_l0_batch_rule"] = batch_rule[1] / n
    return m
