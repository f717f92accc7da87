"""Feature Choice SAE (Ayonrinde 2024), and the aux_zipf loss it shares with Mutual Choice.

Feature Choice and Mutual Choice (saes/architectures/mutual_choice.py) both spend a total budget of k*B (token, feature) matches per batch of B tokens.

- Feature Choice: each feature takes the tokens where its pre-activation is largest, up to its
  capacity: k*B/F each ("uniform"), or a Zipf law over the features' usage ranks ("zipf": the
  most-used feature gets the largest share, capacities summing to k*B and capped at B).
  The usage ranks of the last training step are saved with the SAE (`usage_rank [F]`), so the
  batch inference rule of a saved Zipf SAE gives each feature the capacity it trained with.
- Mutual Choice: the budget goes to the k*B largest entries of the B x F matrix, with no
  per-token or per-feature limit (the same selection rule as BatchTopK; what differs is the aux
  loss, aux_zipf by default).

Inference on single tokens (our choice; the paper leaves it open): a threshold, as BatchTopK.
Feature Choice keeps one per feature, the running average of the smallest positive value each
feature kept in a batch (a feature that took its m best tokens fires, on new data, where its
pre-activation exceeds its m-th best). A pick whose pre-activation is <= 0 is a ReLU zero, not a
firing: counting it would drag the threshold to 0.

aux_zipf (our reading of the paper's description; it published no code): AuxK revives features
that never fire; aux_zipf extends it to features that fire well below their entitlement: the
Zipf-law share of their usage rank (Mutual Choice, and Feature Choice with Zipf capacities), or
k/F (uniform Feature Choice). The share is the real-valued one, so a tail feature whose rounded
capacity is 0 is still entitled to something and can be revived. A feature is under-used when
its running firing rate is below half its entitlement (dead features always are). As AuxK does
for dead features, the under-used features then get their own candidates: each token's k_aux
largest pre-activations among them, which reconstruct the residual error the main code left.
(Re-selecting a feature's own capacity of tokens, as an earlier version did, only repeats the
places the main code already picked, so it cannot move a feature to new tokens.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from saes.architectures.threshold_inference import ThresholdInferenceSAE, per_feature_min_kept
from saes.base import StepContext, StepOutput, selector_training_step
from saes.kernels import FeatureChoice, TopK
from saes.losses import underused_features, uniform_capacities, usage_ranks, zipf_capacities_from_ranks, zipf_target_rates


def zipf_aux_selector(usage: Tensor | None, entitlement: Tensor, ctx: StepContext):
    """Each token's k_aux best under-used features (AuxK's rule over the under-used ones), or None."""
    if ctx.aux_loss != "zipf" or usage is None or ctx.aux_coef <= 0:
        return None
    under = underused_features(usage, entitlement)
    if under.numel() == 0:
        return None
    return TopK(min(ctx.k_aux, int(under.numel())), features=under)


class FeatureChoiceSAE(ThresholdInferenceSAE):
    architecture = "feature_choice"
    aux_losses = ("auxk", "zipf")
    default_aux = "zipf"
    hyperparameters = ("inference", "capacity", "zipf_exponent")
    extra_tensors = ("threshold", "usage_rank")

    def __init__(self, cfg, **kw) -> None:
        super().__init__(cfg, **kw)
        # Usage rank of each feature at the last training step (0 = most used): Zipf capacities outside training.
        self.register_buffer("usage_rank", torch.arange(cfg.num_features, device=self.W_dec.device))

    def capacities(self, batch_size: int, usage: Tensor | None, step: int = 0) -> Tensor:
        """Integer capacities summing to k * batch_size (each at most batch_size); Zipf ones
        rank features by `usage`, or without it by the saved usage ranks."""
        total = self.cfg.k * batch_size
        dev = self.W_dec.device
        if self.cfg.capacity == "zipf":
            ranks = usage_ranks(usage) if usage is not None else self.usage_rank
            return zipf_capacities_from_ranks(ranks, total, batch_size, self.cfg.zipf_exponent)
        return uniform_capacities(self.num_features, total, batch_size, step, dev)

    def entitlement(self, usage: Tensor) -> Tensor:
        """The firing rate per token each feature is entitled to (aux_zipf's yardstick)."""
        if self.cfg.capacity == "zipf":
            return zipf_target_rates(usage, self.cfg.k, self.cfg.zipf_exponent)
        return torch.full_like(usage, min(1.0, self.cfg.k / self.num_features))

    def batch_selector(self, batch_size: int, ctx: StepContext | None) -> object:
        usage = ctx.usage if ctx is not None else None
        step = ctx.step if ctx is not None else 0
        return FeatureChoice(self.capacities(batch_size, usage, step))

    def training_step(self, x: Tensor, ctx: StepContext) -> StepOutput:
        if self.cfg.capacity == "zipf" and ctx.usage is not None:
            with torch.no_grad():
                self.usage_rank.copy_(usage_ranks(ctx.usage))
        main = self.batch_selector(x.shape[0], ctx)
        aux = None
        if ctx.aux_loss == "auxk":
            aux = self.aux_selector(ctx)
        elif ctx.usage is not None:
            aux = zipf_aux_selector(ctx.usage, self.entitlement(ctx.usage), ctx)
        out, codes = selector_training_step(self, x, ctx, main, None, aux)
        self.update_threshold(per_feature_min_kept(codes), ctx.threshold_ema, ctx.reduce)
        return out

    def load_weight_tensors(self, tensors: dict[str, Tensor]) -> None:
        if "usage_rank" not in tensors:  # saved before the ranks were kept: ranked by id, as it then ran
            tensors = {**tensors, "usage_rank": torch.arange(self.num_features)}
        super().load_weight_tensors(tensors)
