"""The threshold inference shared by architectures trained with a batch-level rule.

BatchTopK, Feature Choice and Mutual Choice select over a whole batch while training, which a
single token at inference does not have; they are run with a learned per-feature threshold
instead: a running average of the smallest value the batch rule kept. Saved as a
`threshold [F]` tensor, so the saved SAE runs as a JumpReLU anywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from saes.base import SparseAutoencoder, StepContext
from saes.kernels import SparseCodes, Threshold

if TYPE_CHECKING:
    from saes.config import SAEConfig


class ThresholdInferenceSAE(SparseAutoencoder):
    """An SAE trained with a batch-level rule and run, one token at a time, with a threshold."""

    extra_tensors = ("threshold",)
    threshold_inference = True
    hyperparameters = ("inference",)

    def __init__(self, cfg: SAEConfig, **kw) -> None:
        super().__init__(cfg, **kw)
        dev = self.W_dec.device
        # inf = not yet estimated: the feature never fires under the threshold rule.
        self.register_buffer("threshold", torch.full((cfg.num_features,), float("inf"), device=dev, dtype=self.W_dec.dtype))
        self.register_buffer("threshold_updates", torch.zeros(cfg.num_features, dtype=torch.long, device=dev))

    def batch_selector(self, batch_size: int, ctx: StepContext | None) -> object:
        raise NotImplementedError

    def encode(self, x: Tensor, *, matmul_dtype: torch.dtype | None = None) -> SparseCodes:
        """Threshold rule by default (cfg.inference); "batch" applies the training rule to `x`."""
        if self.cfg.inference == "batch":
            return self._encode_with(x, self.batch_selector(x.shape[0], None), matmul_dtype)
        return self._encode_with(x, Threshold(self.threshold), matmul_dtype)

    def encode_batch(self, x: Tensor, *, matmul_dtype: torch.dtype | None = None) -> SparseCodes:
        """The training rule over the batch `x`, whatever cfg.inference says."""
        return self._encode_with(x, self.batch_selector(x.shape[0], None), matmul_dtype)

    @torch.no_grad()
    def update_threshold(self, per_feature_min: Tensor, ema: float, reduce) -> None:
        """Fold this step's smallest kept value per feature (inf = none kept) into the running threshold."""
        m = reduce(per_feature_min.to(self.threshold.dtype).clone(), "min")
        seen = torch.isfinite(m)
        first = seen & (self.threshold_updates == 0)
        avg = ema * self.threshold + (1 - ema) * m
        self.threshold.copy_(torch.where(first, m, torch.where(seen, avg, self.threshold)))
        self.threshold_updates += seen.long()

    def _fold_thresholds(self, scale: float) -> None:
        self.threshold.div_(scale)


def global_min_kept(codes: SparseCodes) -> Tensor:
    """The smallest positive kept value of the batch, for every feature (inf when nothing fired)."""
    v = codes.vals.detach()
    pos = v[v > 0]
    m = pos.min() if pos.numel() else v.new_tensor(float("inf"))
    return m.expand(codes.num_features)


def per_feature_min_kept(codes: SparseCodes) -> Tensor:
    """Per feature, the smallest positive value among the places kept for it (inf when none).

    A kept place whose pre-activation was <= 0 holds a ReLU zero: the feature did not fire there,
    so it says nothing about where the feature starts firing (counting it drags the threshold to 0).
    """
    v = codes.vals.detach()
    pos = v > 0
    out = v.new_full((codes.num_features,), float("inf"))
    return out.scatter_reduce(0, codes.cols[pos], v[pos], reduce="amin", include_self=True)
