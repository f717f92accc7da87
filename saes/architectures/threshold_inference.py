"""The threshold inference shared by architectures trained with a batch-level rule.

BatchTopK, Feature Choice and Mutual Choice select over a whole batch while training, which a
single token at inference does not have; they are run with a learned per-feature threshold
instead, saved as a `threshold [F]` tensor, so the saved SAE runs as a JumpReLU anywhere.

During training the threshold is a running average of the smallest value the batch rule kept
(`update_threshold`), a usable rule for a checkpoint taken mid-run. It lags the weights: on the
quickstart cache a BatchTopK SAE's kept minimum fell 2% a step near the end of a 21-step run
while the average spans several steps, and since the count is steep in the threshold (2% on
the threshold was 9% on the L0) the saved SAEs fired 27-29 features per token instead of 32.
After the last update the trainer calibrates it once (`calibrate_threshold`, called from
saes.slot): the batch rule applied to the run's last batches pooled together (up to 16k tokens)
with the final weights, and the threshold set to the smallest value it kept. That is an order
statistic of the final weights over a sample: for a feature that keeps c of N tokens, the chance
that a new token from the same distribution lies above its c-th largest is c/(N+1) on average,
so the expected held-out count is the batch rule's own (k per token for BatchTopK, Mutual
Choice and uniform Feature Choice) whatever the shape of the distribution. Averaging such values
over batches (as the running threshold does) would not be: the count is a convex function of
the threshold, so the count at an average threshold is not the average count. The pool is
large because the count's spread is that of the tokens' own L0: calibrated on one batch of 256
synthetic tokens the held-out L0 of a k = 4 SAE ranged over 3.70-4.05, on 16k tokens 3.96-4.03.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from saes.base import SparseAutoencoder, StepContext
from saes.kernels import SparseCodes, Threshold

if TYPE_CHECKING:
    from saes.config import SAEConfig

# The calibration set: the run's last batches, up to this many tokens, this many batches, and
# this many pre-activations (tokens x features, 512 MiB in float32) when the SAE is wide; at
# least the last batch. A checkpoint taken among those steps carries the batches seen so far
# (saes/checkpoint.py), so a resumed run calibrates on the same set as an uninterrupted one.
CALIBRATION_TOKENS = 16_384
CALIBRATION_BATCHES = 16
CALIBRATION_ENTRIES = 2**27


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

    def calibration_batches(self, batch_size: int) -> int:
        """How many of the run's last batches (of `batch_size` tokens) the threshold is calibrated on
        (see CALIBRATION_TOKENS)."""
        tokens = min(CALIBRATION_TOKENS, CALIBRATION_ENTRIES // self.num_features)
        return max(1, min(CALIBRATION_BATCHES, tokens // max(batch_size, 1)))

    def kept_minimum(self, codes: SparseCodes) -> Tensor:
        """What one batch says the threshold is: the smallest positive value the batch rule kept
        (one value for every feature; Feature Choice keeps one per feature)."""
        return global_min_kept(codes)

    @torch.no_grad()
    def calibrate_threshold(self, x: Tensor, reduce=lambda t, op: t) -> None:
        """Set the threshold from the batch rule on `x` with the current weights (see the module doc).

        `x` is a calibration set in training units (this rank's part of it), selected over as one
        batch; over ranks the values are averaged. A feature the batch rule did not fire on keeps
        its running value.
        """
        m = self.kept_minimum(self.encode_batch(x)).double()
        seen = torch.isfinite(m)
        packed = torch.cat([torch.where(seen, m, torch.zeros_like(m)), seen.double()])
        reduce(packed, "sum")
        f = self.num_features
        total, count = packed[:f], packed[f:]
        value = (total / count.clamp_min(1)).to(self.threshold.dtype)
        self.threshold.copy_(torch.where(count > 0, value, self.threshold))

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
