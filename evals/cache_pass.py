"""One streaming pass of an SAE over cached activations: reconstruction and feature statistics.

The reader streams the split in order (no shuffle, windows of one shard, so only the pages of
about two shards are mapped in whatever the cache size); each batch is encoded once and every
accumulator reads the same codes, so feature statistics over a 1M-token cache cost one encode
per batch and memory does not grow with the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from evals.health import FeatureStats
from evals.probing import DocPool
from evals.reconstruction import ReconstructionStats
from harvesting import CacheReader
from workbench.errors import WorkbenchError


@dataclass
class CachePassResult:
    reconstruction: ReconstructionStats
    features: FeatureStats

    @property
    def mean_activation(self) -> torch.Tensor:
        """Mean activation over the pass's tokens (mean ablation replaces activations by it)."""
        r = self.reconstruction
        return (r.sum_x / max(r.n, 1)).float()


def accumulate_batch(sae, x: torch.Tensor, rec: ReconstructionStats, feats: FeatureStats):
    """Encode one batch once and feed both accumulators from those codes; returns (codes, x_hat)
    for any other reader of the same batch (probing's pool, a parity check)."""
    codes = sae.encode(x)
    x_hat = sae.decode(codes)
    vals = codes.vals
    b = x.shape[0]
    l0 = torch.bincount(codes.rows[vals != 0], minlength=b)
    l1 = torch.zeros(b, dtype=torch.float64, device=vals.device).index_add_(0, codes.rows, vals.abs().double())
    rec.update(x, x_hat, l0, l1)
    feats.update(codes.cols, vals, b)
    return codes, x_hat


@torch.no_grad()  # not inference_mode: the kernels reuse workspaces across calls
def cache_pass(
    sae,
    reader: CacheReader,
    hook: str,
    *,
    split: str = "heldout",
    heldout_fraction: float = 0.01,
    batch_size: int = 4096,
    max_tokens: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    pool: DocPool | None = None,
) -> CachePassResult:
    """Encode every row of `split` once; return the reconstruction and feature accumulators.

    `pool` (sparse probing's per-document pooling) reads the same codes, so probing adds no encode;
    it gets each row's document and token id (it leaves separator rows out).
    """
    d = reader.d_model(hook)
    if d != sae.d_in:
        raise WorkbenchError(f"the SAE takes d_in={sae.d_in} but the cache's {hook} activations have d_model={d}")
    rec = ReconstructionStats(sae.d_in, sae.num_features)
    feats = FeatureStats(sae.num_features)
    total = reader.num_rows(split, heldout_fraction)
    if max_tokens:
        total = min(total, max_tokens)
    bar = tqdm(total=total, unit="tok", unit_scale=True, desc=f"eval {split}", disable=not progress)
    seen = 0
    for batch in reader.batches(hook, batch_size, shuffle=False, split=split, heldout_fraction=heldout_fraction,
                                drop_last=False, with_ids=pool is not None, window_shards=1):
        x = batch[hook]
        docs, tokens = batch.get("doc_ids"), batch.get("token_ids")
        if max_tokens and seen + x.shape[0] > max_tokens:
            x = x[: max_tokens - seen]
            docs = docs[: max_tokens - seen] if docs is not None else None
            tokens = tokens[: max_tokens - seen] if tokens is not None else None
        x = x.to(device, non_blocking=True)
        codes, _ = accumulate_batch(sae, x, rec, feats)
        b = x.shape[0]
        if pool is not None:
            pool.update(x, codes, docs, tokens)
        seen += b
        bar.update(b)
        if max_tokens and seen >= max_tokens:
            break
    bar.close()
    if seen == 0:
        raise WorkbenchError(f"the {split!r} split of the cache at {str(reader.path)!r} holds no tokens")
    return CachePassResult(rec, feats)
