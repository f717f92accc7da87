"""Feature Choice and Mutual Choice SAEs (Ayonrinde 2024), with the aux_zipf loss.

Both spend a total budget of k*B (token, feature) matches per batch of B tokens.

- Feature Choice: each feature takes the tokens where its pre-activation is largest, up to its
  capacity: k*B/F each ("uniform"), or a Zipf law over the features' usage ranks ("zipf": the
  most-used feature gets the largest share, capacities summing to k*B and capped at B).
- Mutual Choice: the budget goes to the k*B largest entries of the B x F matrix, with no
  per-token or per-feature limit (the same selection rule as BatchTopK; what differs is the aux
  loss, aux_zipf by default).

Inference on single tokens (our choice; the paper leaves it open): a threshold, as BatchTopK.
Feature Choice keeps one per feature, the running average of the smallest value each feature
kept in a batch (a feature that took its m best tokens fires, on new data, where its
pre-activation exceeds its m-th best); Mutual Choice keeps one global threshold, as BatchTopK.

aux_zipf (our reading of the paper's description; it published no code): AuxK revives features
that never fire; aux_zipf extends it to features that fire well below their entitlement: the
Zipf-law share of their usage rank (Mutual Choice), or their capacity (Feature Choice). A
feature is under-used when its running firing rate is below half its entitlement (dead features
always are). The under-used features then reconstruct the residual error, as AuxK's dead
features do, chosen by the architecture's own rule: for Mutual Choice, each token's k_aux largest
pre-activations among them (exactly AuxK's rule); for Feature Choice, each under-used feature
takes its own capacity's worth of tokens (its best ones), which keeps Feature Choice's whole
selection in the fast features-major layout.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saes.base import StepContext, StepOutput, selector_training_step
from saes.batchtopk import BatchTopKSAE, ThresholdInferenceSAE, per_feature_min_kept
from saes.kernels import BatchTopK, FeatureChoice, TopK
from saes.losses import uniform_capacities, zipf_capacities, zipf_target_rates
from saes.registry import register

UNDERUSED = 0.5  # under-used: firing rate below this fraction of the entitlement


def underused_features(usage: Tensor, entitlement: Tensor) -> Tensor:
    """Ids of features whose running firing rate is below UNDERUSED x their entitled rate."""
    return torch.nonzero(usage < UNDERUSED * entitlement).flatten()


def zipf_aux_selector(usage: Tensor | None, entitlement: Tensor, ctx: StepContext):
    if ctx.aux_loss != "zipf" or usage is None or ctx.aux_coef <= 0:
        return None
    under = underused_features(usage, entitlement)
    if under.numel() == 0:
        return None
    return TopK(min(ctx.k_aux, int(under.numel())), features=under)


@register
class FeatureChoiceSAE(ThresholdInferenceSAE):
    architecture = "feature_choice"
    default_aux = "zipf"

    def capacities(self, batch_size: int, usage: Tensor | None, step: int = 0) -> Tensor:
        """Integer capacities summing to k * batch_size (each at most batch_size)."""
        total = self.cfg.k * batch_size
        dev = self.W_dec.device
        if self.cfg.capacity == "zipf":
            u = usage if usage is not None else torch.zeros(self.num_features, device=dev)
            return zipf_capacities(u, total, batch_size, self.cfg.zipf_exponent)
        return uniform_capacities(self.num_features, total, batch_size, step, dev)

    def batch_selector(self, batch_size: int, ctx: StepContext | None) -> object:
        usage = ctx.usage if ctx is not None else None
        step = ctx.step if ctx is not None else 0
        return FeatureChoice(self.capacities(batch_size, usage, step))

    def training_step(self, x: Tensor, ctx: StepContext) -> StepOutput:
        main = self.batch_selector(x.shape[0], ctx)
        aux = None
        if ctx.aux_loss == "auxk":
            aux = self.aux_selector(ctx)
        elif ctx.aux_loss == "zipf" and ctx.usage is not None and ctx.aux_coef > 0:
            entitlement = main.capacity.to(torch.float32) / x.shape[0]
            under = ctx.usage < UNDERUSED * entitlement
            if bool(under.any()):
                aux = FeatureChoice(torch.where(under, main.capacity, torch.zeros_like(main.capacity)))
        out, codes = selector_training_step(self, x, ctx, main, None, aux)
        self.update_threshold(per_feature_min_kept(codes), ctx.threshold_ema, ctx.reduce)
        return out


@register
class MutualChoiceSAE(BatchTopKSAE):
    """Mutual Choice: BatchTopK's rule (the k*B budget spread freely over the B x F matrix), with
    the paper's aux_zipf loss on under-used features as its default auxiliary loss."""

    architecture = "mutual_choice"
    default_aux = "zipf"

    def aux_selector(self, ctx: StepContext) -> object | None:
        if ctx.aux_loss == "auxk":
            return super().aux_selector(ctx)
        if ctx.usage is None:
            return None
        return zipf_aux_selector(ctx.usage, zipf_target_rates(ctx.usage, self.cfg.k, self.cfg.zipf_exponent), ctx)
