"""Feature Choice SAE (Ayonrinde 2024), and the aux_zipf loss it shares with Mutual Choice.

Feature Choice and Mutual Choice (saes/architectures/mutual_choice.py) both spend a total budget of k*B (token, feature) matches per batch of B tokens.

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

from saes.architectures.threshold_inference import ThresholdInferenceSAE, per_feature_min_kept
from saes.base import StepContext, StepOutput, selector_training_step
from saes.kernels import FeatureChoice
from saes.losses import UNDERUSED, uniform_capacities, zipf_capacities


class FeatureChoiceSAE(ThresholdInferenceSAE):
    architecture = "feature_choice"
    aux_losses = ("auxk", "zipf")
    default_aux = "zipf"
    hyperparameters = ("inference", "capacity", "zipf_exponent")

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
