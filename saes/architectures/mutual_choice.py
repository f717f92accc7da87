"""Mutual Choice SAE (Ayonrinde 2024): BatchTopK's selection with the aux_zipf loss.

The k*B budget of a batch of B tokens goes to the k*B largest entries of the B x F matrix, with
no per-token or per-feature limit (the same selection rule as BatchTopK); what differs is the
aux loss, aux_zipf by default: features firing below half their entitlement, the Zipf-law share
of their usage rank capped at the even share k/F (see saes/architectures/feature_choice.py for
our reading of the paper, and saes.losses.zipf_entitlement_from_ranks for the cap), reconstruct
the residual error with each token's k_aux largest pre-activations among them (AuxK's rule).
"""

from __future__ import annotations

from saes.architectures.batchtopk import BatchTopKSAE
from saes.architectures.feature_choice import zipf_aux_selector
from saes.base import StepContext
from saes.losses import zipf_target_rates


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
