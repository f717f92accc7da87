"""BatchTopK SAE (Bussmann et al. 2024).

Training keeps the k*B largest pre-activations of the whole batch of B tokens, so some tokens get
more than k features and others fewer, at the same average. That rule needs a batch; a single
token at inference is encoded with a learned threshold instead (`ThresholdInferenceSAE`; every
entry of the saved `threshold [F]` is equal for BatchTopK).
"""

from __future__ import annotations

from torch import Tensor

from saes.architectures.threshold_inference import ThresholdInferenceSAE, global_min_kept
from saes.base import StepContext, StepOutput, selector_training_step
from saes.kernels import BatchTopK


class BatchTopKSAE(ThresholdInferenceSAE):
    architecture = "batchtopk"
    aux_losses = ("auxk",)
    default_aux = "auxk"

    def batch_selector(self, batch_size: int, ctx: StepContext | None) -> object:
        return BatchTopK(self.cfg.k)

    def training_step(self, x: Tensor, ctx: StepContext) -> StepOutput:
        multi = BatchTopK(min(4 * self.cfg.k, self.num_features)) if ctx.multi_topk else None
        out, codes = selector_training_step(self, x, ctx, BatchTopK(self.cfg.k), multi, self.aux_selector(ctx))
        self.update_threshold(global_min_kept(codes), ctx.threshold_ema, ctx.reduce)
        return out
