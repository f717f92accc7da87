"""Losses and the numbers they are normalised by: FVU, AuxK, aux_zipf, Multi-TopK, Zipf targets.

Every reconstruction term is a sum of squared errors divided by a total variance (sum over
tokens of ||t - mean(t)||^2 of its target t: the input for the main and Multi-TopK terms, the
residual error for AuxK / aux_zipf), i.e. a fraction of variance unexplained. Sums rather
than means, so that in data-parallel training each rank's term over its own tokens, divided by
the global variance, adds up to the full-batch value.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from saes.kernels import SparseCodes, sparse_decode


def fvu(x: Tensor, x_hat: Tensor) -> Tensor:
    """Fraction of variance unexplained of one batch: sum ||x - x_hat||^2 / sum ||x - mean x||^2."""
    return (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-30)


def moment_sums(x: Tensor) -> Tensor:
    """[sum x (d values), sum ||x||^2, n] in float64: what the global variance is reduced from."""
    xd = x.double()
    return torch.cat([xd.sum(0), xd.pow(2).sum().view(1), xd.new_tensor([x.shape[0]])])


def variance_from_sums(sums: Tensor) -> Tensor:
    """sum over tokens of ||x - mean||^2 from `moment_sums` (possibly summed over ranks)."""
    s, sq, n = sums[:-2], sums[-2], sums[-1]
    return (sq - s.pow(2).sum() / n).clamp_min(1e-30)


def aux_reconstruction_loss(residual: Tensor, aux_codes: SparseCodes, W_dec: Tensor, denom: Tensor) -> Tensor:
    """AuxK-style term: features outside the main code reconstruct what the main code missed.

    sum ||residual - aux decode||^2 / denom, where the caller passes the residual's variance
    (so the term is the fraction of the residual's variance the aux features leave unexplained).

    `residual` is x - x_hat (detached). The aux reconstruction is decoded *without* b_dec: the
    residual already has the decoder bias removed once (x_hat contains it), so adding it again
    would make the aux features fit -b_dec as well (the bug sparsify#132 reported).
    """
    if aux_codes.nnz == 0:
        return residual.new_zeros(())
    recon = sparse_decode(aux_codes, W_dec, None)
    return (recon - residual).pow(2).sum() / denom


def zipf_weights(num_features: int, exponent: float, device: torch.device | None = None) -> Tensor:
    """Normalised Zipf law over ranks 1..F: w_r proportional to r^-exponent, summing to 1."""
    r = torch.arange(1, num_features + 1, dtype=torch.float64, device=device)
    w = r.pow(-exponent)
    return w / w.sum()


def usage_ranks(usage: Tensor) -> Tensor:
    """0-based rank of each feature by usage, most used first (ties broken by feature id).

    Feature Choice ranks by demand, not by its own firing (saes/architectures/feature_choice.py):
    its firing is the capacity it granted, so ranks taken from it would only repeat themselves.
    """
    order = torch.sort(-usage.double(), stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel(), device=order.device)
    return ranks


def zipf_target_rates(usage: Tensor, k: float, exponent: float) -> Tensor:
    """aux_zipf's entitlement: each feature's Zipf-law firing rate per token by its usage rank,
    capped at k/F (see `zipf_entitlement_from_ranks`)."""
    return zipf_entitlement_from_ranks(usage_ranks(usage), k, exponent)


def zipf_entitlement_from_ranks(ranks: Tensor, k: float, exponent: float) -> Tensor:
    """The firing rate per token each feature is entitled to: min(k * w_rank, k / F).

    k * w_rank is its share of the k matches per token under a Zipf law over the ranks. The cap is
    what a batch can give every feature at once, its even share k*B/F of the batch's k*B matches
    (what uniform Feature Choice grants). Uncapped, Zipf(1) with k 32 over 4,608 features entitles
    the top ranks to 0.4-1.0 matches per token, far above what any learned feature fires at (the
    most used fire on a few percent of tokens), so aux_zipf flagged exactly the most-used features
    as under-used and pulled them toward the residual. Capped, a feature firing at least as often
    as the average feature is never under-used; the Zipf law still sets the (lower) entitlement
    of the tail, which is where under-use is worth reviving.
    """
    f = ranks.numel()
    w = zipf_weights(f, exponent, ranks.device)
    return (k * w).clamp(max=k / f).to(torch.float32)[ranks.long()]


def integer_allocation(shares: Tensor, total: int, cap: int) -> Tensor:
    """Integers c_f <= cap proportional to `shares`, summing to min(total, cap * F).

    Largest-remainder rounding after capping: features whose share exceeds the cap are set to
    the cap and their excess is spread over the rest in proportion (a few passes suffice).
    """
    f = shares.numel()
    total = min(int(total), cap * f)
    s = shares.double().clamp_min(0)
    if float(s.sum()) <= 0:
        s = torch.ones_like(s)
    alloc = torch.zeros_like(s)
    capped = torch.zeros(f, dtype=torch.bool, device=s.device)
    remaining = float(total)
    for _ in range(64):
        free = ~capped
        want = s * free
        tot = float(want.sum())
        if tot <= 0:
            break
        alloc = torch.where(capped, torch.full_like(s, cap), want * (remaining / tot))
        over = (alloc > cap) & free
        if not bool(over.any()):
            break
        capped |= over
        remaining = total - cap * float(capped.sum())
    alloc = alloc.clamp(max=cap)
    base = alloc.floor()
    left = total - int(base.sum())
    if left > 0:
        frac = torch.where(base < cap, alloc - base, torch.full_like(alloc, -1.0))
        # Stable order: bigger remainders first, ties by feature id.
        extra = torch.sort(-frac, stable=True).indices[:left]
        base[extra] += 1
    return base.long()


def uniform_capacities(num_features: int, total: int, cap: int, step: int, device: torch.device) -> Tensor:
    """k*B/F tokens per feature; the remainder goes to features in a rotation that moves with `step`.

    So no feature gets the spare slot every step, and the total is exactly min(k*B, cap*F).
    """
    total = min(total, cap * num_features)
    base, left = divmod(total, num_features)
    cap_t = torch.full((num_features,), base, dtype=torch.long, device=device)
    if left:
        start = (step * left) % num_features
        idx = (torch.arange(left, device=device) + start) % num_features
        cap_t[idx] += 1
    return cap_t


def zipf_capacities(usage: Tensor, total: int, cap: int, exponent: float) -> Tensor:
    """Feature Choice capacities following a Zipf law over the features' usage ranks (Ayonrinde 2024)."""
    return zipf_capacities_from_ranks(usage_ranks(usage), total, cap, exponent)


def zipf_capacities_from_ranks(ranks: Tensor, total: int, cap: int, exponent: float) -> Tensor:
    """Zipf capacities given each feature's 0-based usage rank (what a saved SAE keeps)."""
    shares = zipf_weights(ranks.numel(), exponent, ranks.device)[ranks.long()]
    return integer_allocation(shares, total, cap)


def zipf_deficit(usage: Tensor, k: float, exponent: float) -> Tensor:
    """How far below its entitlement (`zipf_target_rates`) each feature is used: 1 - usage/target, in [0, 1].

    Dead features have deficit 1; features at or above their share have 0.
    """
    target = zipf_target_rates(usage, k, exponent)
    return (1 - usage.double() / target).clamp(0, 1).to(torch.float32)


def lr_multiplier(step: int, total: int, warmup_steps: int, decay_steps: int, decay: str) -> float:
    """Learning-rate factor at `step` (0-based): linear warm-up, constant, then decay to 0."""
    f = 1.0
    if warmup_steps > 0 and step < warmup_steps:
        f = (step + 1) / warmup_steps
    if decay != "none" and decay_steps > 0:
        start = total - decay_steps
        if step >= start:
            frac = (total - step) / decay_steps  # 1 at the first decay step, 1/decay_steps at the last
            f = min(f, frac if decay == "linear" else 0.5 * (1 - math.cos(math.pi * frac)))
    return f


# aux_zipf: a feature is under-used when its running firing rate is below this fraction of its
# entitlement (its Zipf-law share capped at k/F, or k/F for uniform Feature Choice); dead
# features always are.
UNDERUSED = 0.5


def underused_features(usage: Tensor, entitlement: Tensor) -> Tensor:
    """Ids of features whose running firing rate is below UNDERUSED x their entitled rate."""
    return torch.nonzero(usage < UNDERUSED * entitlement).flatten()
