"""Feature Choice SAE (Ayonrinde 2024), and the aux_zipf loss it shares with Mutual Choice.

Feature Choice and Mutual Choice (saes/architectures/mutual_choice.py) both spend a total budget of k*B (token, feature) matches per batch of B tokens.

- Feature Choice: each feature takes the tokens where its pre-activation is largest, up to its
  capacity: k*B/F each ("uniform"), or a Zipf law over the features' ranks ("zipf": the
  first-ranked feature gets the largest share, capacities summing to k*B and capped at B).
  The ranks of the last training step are saved with the SAE (`usage_rank [F]`), so the
  batch inference rule of a saved Zipf SAE gives each feature the capacity it trained with.
- Mutual Choice: the budget goes to the k*B largest entries of the B x F matrix, with no
  per-token or per-feature limit (the same selection rule as BatchTopK; what differs is the aux
  loss, aux_zipf by default).

Zipf ranks: by demand, not by firing. A Feature Choice feature fires on exactly the tokens its
capacity grants (where its pre-activation is positive), so ranks taken from its firing rate
only repeat the capacities they set: started from equal usage (ties by id), a trained SAE's
4,608 ranks were its feature ids but for 7. The ranks come instead from each feature's running
*demand*: on how many tokens per token it is among the k largest pre-activations (the TopK
rule: no per-feature cap, the same k*B total), averaged over about the last 10% of the run.
Demand follows what the encoder has learnt (a feature whose direction is common in the data is
in many tokens' top k, whatever its capacity), and it sums to k like the capacities. We chose it
over pre-activation mass (sum of positive pre-activations), which would let a few high-norm
tokens (2% of the residual stream here, with 38% of its variance) set the ranks, and over the
BatchTopK rule, which gives those same tokens hundreds of features each. It is measured before
the step's selection, on the batch's first DEMAND_TOKENS tokens (the batch is shuffled) with a
matmul of their own: reading it from the step's own matmul would need a second selector there,
which takes Feature Choice off its faster features-major layout (1.8x the step time at F 4,608,
against about 1.05x for the sample, both measured on one CPU thread).

Inference on single tokens (our choice; the paper leaves it open): a threshold, as BatchTopK.
Feature Choice keeps one per feature: the smallest positive value each feature kept (a feature
that took its m best tokens fires, on new data, where its pre-activation exceeds its m-th best),
as a running average during training, calibrated on the run's last batches with the final weights
(saes/architectures/threshold_inference.py). A pick whose pre-activation is <= 0 is a ReLU
zero, not a firing: counting it would drag the threshold to 0.

aux_zipf (our reading of the paper's description; it published no code): AuxK revives features
that never fire; aux_zipf extends it to features that fire well below their entitlement: the
Zipf-law share of their rank, capped at the even share k/F (Mutual Choice ranks by usage,
Feature Choice with Zipf capacities by demand; see saes.losses.zipf_entitlement_from_ranks for
why the cap), or k/F (uniform Feature Choice). The share is the real-valued one, so a tail
feature whose rounded capacity is 0 is still entitled to something and can be revived. A
feature is under-used when its running firing rate is below half its entitlement (dead features
always are). As AuxK does for dead features, the under-used features then get their own
candidates: each token's k_aux largest pre-activations among them, which reconstruct the
residual error the main code left. (Re-selecting a feature's own capacity of tokens, as an
earlier version did, only repeats the places the main code already picked, so it cannot move a
feature to new tokens.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from saes.architectures.threshold_inference import ThresholdInferenceSAE, per_feature_min_kept
from saes.base import StepContext, StepOutput, selector_training_step
from saes.kernels import FeatureChoice, SparseCodes, TopK
from saes.losses import (
    underused_features,
    uniform_capacities,
    usage_ranks,
    zipf_capacities_from_ranks,
    zipf_entitlement_from_ranks,
)

# Tokens of each batch the running demand is measured on (see the module doc).
DEMAND_TOKENS = 512


def zipf_aux_selector(usage: Tensor | None, entitlement: Tensor, ctx: StepContext):
    """Each token's k_aux best under-used features (AuxK's rule over the under-used ones), or None."""
    if ctx.aux_loss != "zipf" or usage is None or ctx.aux_coef <= 0:
        return None
    under = underused_features(usage, entitlement)
    if under.numel() == 0:
        return None
    return TopK(min(ctx.k_aux, int(under.numel())), features=under)


def demand_decay(total_steps: int) -> float:
    """Per-step decay of the running demand: a window of about 10% of the run (2 to 100 steps)."""
    return min(0.99, max(0.5, 1 - 10 / max(total_steps, 1)))


class FeatureChoiceSAE(ThresholdInferenceSAE):
    architecture = "feature_choice"
    aux_losses = ("auxk", "zipf")
    default_aux = "zipf"
    hyperparameters = ("inference", "capacity", "zipf_exponent")
    extra_tensors = ("threshold", "usage_rank")

    def __init__(self, cfg, **kw) -> None:
        super().__init__(cfg, **kw)
        dev = self.W_dec.device
        # Rank of each feature at the last training step (0 = first): Zipf capacities outside training.
        self.register_buffer("usage_rank", torch.arange(cfg.num_features, device=dev))
        # Running demand per token (see the module doc) and how many steps it has seen (0 = none).
        self.register_buffer("demand", torch.zeros(cfg.num_features, dtype=torch.float32, device=dev))
        self.register_buffer("demand_steps", torch.zeros((), dtype=torch.long, device=dev))

    def capacities(self, batch_size: int, usage: Tensor | None = None, step: int = 0) -> Tensor:
        """Integer capacities summing to k * batch_size (each at most batch_size); Zipf ones
        rank features by `usage` when given, else by the saved ranks (`usage_rank`)."""
        total = self.cfg.k * batch_size
        dev = self.W_dec.device
        if self.cfg.capacity == "zipf":
            ranks = usage_ranks(usage) if usage is not None else self.usage_rank
            return zipf_capacities_from_ranks(ranks, total, batch_size, self.cfg.zipf_exponent)
        return uniform_capacities(self.num_features, total, batch_size, step, dev)

    def entitlement(self) -> Tensor:
        """The firing rate per token each feature is entitled to (aux_zipf's yardstick): the capped
        Zipf share of its rank (the ranks its capacities come from), or k/F for uniform capacities."""
        if self.cfg.capacity == "zipf":
            return zipf_entitlement_from_ranks(self.usage_rank, self.cfg.k, self.cfg.zipf_exponent)
        return torch.full((self.num_features,), min(1.0, self.cfg.k / self.num_features), device=self.W_dec.device)

    def batch_selector(self, batch_size: int, ctx: StepContext | None) -> object:
        step = ctx.step if ctx is not None else 0
        return FeatureChoice(self.capacities(batch_size, None, step))

    def kept_minimum(self, codes: SparseCodes) -> Tensor:
        return per_feature_min_kept(codes)

    @torch.no_grad()
    def update_demand(self, x: Tensor, ctx: StepContext) -> None:
        """Fold the demand of the first DEMAND_TOKENS tokens of `x` (each one's k largest positive
        pre-activations, counted per feature and summed over ranks) into the running rate."""
        sub = x[:DEMAND_TOKENS]
        dt = ctx.matmul_dtype or x.dtype
        pre = torch.addmm(self.b_enc.to(dt), (sub - self.b_dec).to(dt), self.W_enc.to(dt))
        v, i = pre.topk(min(self.cfg.k, self.num_features), dim=1, sorted=False)
        f = self.num_features
        packed = torch.cat([torch.bincount(i[v > 0], minlength=f).to(torch.float64),
                            torch.tensor([float(sub.shape[0])], dtype=torch.float64, device=x.device)])
        ctx.reduce(packed, "sum")
        rate = (packed[:f] / packed[f]).to(torch.float32)
        if int(self.demand_steps) == 0:
            self.demand.copy_(rate)
        else:
            d = demand_decay(ctx.total_steps)
            self.demand.mul_(d).add_(rate, alpha=1 - d)
        self.demand_steps += 1

    def training_step(self, x: Tensor, ctx: StepContext) -> StepOutput:
        if self.cfg.capacity == "zipf":
            self.update_demand(x, ctx)
            with torch.no_grad():
                self.usage_rank.copy_(usage_ranks(self.demand))
        main = self.batch_selector(x.shape[0], ctx)
        aux = None
        if ctx.aux_loss == "auxk":
            aux = self.aux_selector(ctx)
        elif ctx.usage is not None:
            aux = zipf_aux_selector(ctx.usage, self.entitlement(), ctx)
        out, codes = selector_training_step(self, x, ctx, main, None, aux)
        self.update_threshold(per_feature_min_kept(codes), ctx.threshold_ema, ctx.reduce)
        return out

    def load_weight_tensors(self, tensors: dict[str, Tensor]) -> None:
        if "usage_rank" not in tensors:  # saved before the ranks were kept: ranked by id, as it then ran
            tensors = {**tensors, "usage_rank": torch.arange(self.num_features)}
        super().load_weight_tensors(tensors)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kw) -> None:
        # A checkpoint written before the demand was kept: start it afresh (as at step 0).
        for name in ("demand", "demand_steps"):
            state_dict.setdefault(prefix + name, getattr(self, name).detach().clone().zero_())
        super()._load_from_state_dict(state_dict, prefix, *args, **kw)
