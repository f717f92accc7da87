"""Mutual Choice SAE (Ayonrinde 2024): BatchTopK's selection with the aux_zipf loss.

The k*B budget of a batch of B tokens goes to the k*B largest entries of the B x F matrix, with
no per-token or per-feature limit (the same selection rule as BatchTopK); what differs is the
aux loss, aux_zipf by default: features firing below half their Zipf-law share of the usage
(see saes/architectures/feature_choice.py for our reading of the paper) reconstruct the residual
error with each token's k_aux largest pre-activations among them (AuxK's rule).
"""

from __future__ import annotations

from torch import Tensor

from saes.architectures.batchtopk import BatchTopKSAE
from saes.base import StepContext
from saes.kernels import TopK
from saes.losses import underused_features, zipf_target_rates


def zipf_aux_selector(usage: Tensor | None, entitlement: Tensor, ctx: StepContext):
    if ctx.aux_loss != "zipf" or usage is None or ctx.aux_coef <= 0:
        return None
    under = underused_features(usage, entitlement)
    if under.numel() == 0:
        return None
    return TopK(min(ctx.k_aux, int(under.numel())), features=under)


class MutualChoiceSAE(BatchTopKSAE):
    """Mutual Choice: BatchTopK's rule (the k*B budget spread freely over the B x F matrix), with
    the paper's aux_zipf loss on under-used features as its default auxiliary loss."""

    architecture = "mutual_choice"
    aux_losses = ("auxk", "zipf")
    default_aux = "zipf"
    hyperparameters = ("inference", "zipf_exponent")

    def aux_selector(self, ctx: StepContext) -> object | None:
        if ctx.aux_loss == "auxk":
            return super().aux_selector(ctx)
        if ctx.usage is None:
            return None
        return zipf_aux_selector(ctx.usage, zipf_target_rates(ctx.usage, self.cfg.k, self.cfg.zipf_exponent), ctx)
