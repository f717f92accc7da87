"""JumpReLU SAE (Rajamanoharan et al. 2024): z = pre * H(pre - theta), trained with an L0 penalty.

theta (one per feature, kept positive as exp(log_threshold)) gets gradients through
straight-through estimators with a rectangle kernel K of width `jumprelu_bandwidth` (eps):
    d z / d theta      = -(theta / eps) K((pre - theta) / eps)
    d H(pre-theta)/d theta = -(1 / eps) K((pre - theta) / eps)
and the pre-activation gets the ordinary derivative H(pre - theta) (none through the step).

Sparse: K vanishes unless |pre - theta| < eps/2, so the only places with any gradient are those
with pre > theta - eps/2. `encode` selects exactly those (a Threshold selector at
max(theta - eps/2, 0)), the values below theta are zeroed by the JumpReLU, and decode stays
sparse. Exact as long as theta > eps/2 (then every place with a non-zero kernel is selected);
below that, places with negative pre-activation inside the kernel are not, which only drops the
threshold gradient's contribution from negative pre-activations.

Initial thresholds: when the trainer has a data sample, each feature's threshold starts at the
(1 - k/F) quantile of its pre-activations there, so training starts at L0 about k and the L0
penalty tunes it from there. (Adam moves log(theta) by about the learning rate per step: from a
fixed small start, a run of a few hundred steps never reaches useful thresholds and stays dense.)
Without a sample, thresholds start at `jumprelu_init_threshold`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import math

import torch
from torch import Tensor, nn

from saes.base import Penalty, SparseAutoencoder, StepContext, StepOutput, fired_counts
from saes.kernels import SparseCodes, Threshold, encode, sparse_decode

if TYPE_CHECKING:
    from saes.config import SAEConfig


def rectangle(u: Tensor) -> Tensor:
    """K(u) = 1 on (-1/2, 1/2], else 0."""
    return ((u > -0.5) & (u <= 0.5)).to(u.dtype)


class JumpReLUFn(torch.autograd.Function):
    """z = v * H(v - theta), with the straight-through threshold gradient."""

    @staticmethod
    def forward(ctx, v: Tensor, theta: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(v, theta)
        ctx.eps = eps
        return v * (v > theta).to(v.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        v, theta = ctx.saved_tensors
        eps = ctx.eps
        dv = g * (v > theta).to(g.dtype) if ctx.needs_input_grad[0] else None
        dtheta = None
        if ctx.needs_input_grad[1]:
            dtheta = -(theta / eps) * rectangle((v - theta) / eps) * g
        return dv, dtheta, None


class StepFn(torch.autograd.Function):
    """H(v - theta) with the straight-through threshold gradient (and none for v)."""

    @staticmethod
    def forward(ctx, v: Tensor, theta: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(v, theta)
        ctx.eps = eps
        return (v > theta).to(v.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        v, theta = ctx.saved_tensors
        dtheta = None
        if ctx.needs_input_grad[1]:
            dtheta = -(1.0 / ctx.eps) * rectangle((v - theta) / ctx.eps) * g
        return None, dtheta, None


class JumpReLUSAE(SparseAutoencoder):
    architecture = "jumprelu"
    uses_k = True  # k places the initial thresholds (L0 about k); the L0 penalty tunes it from there
    penalty = Penalty("l0", coef_field="l0_coef", default_coef=1.0, help="L0 penalty coefficient (per-token sse units)")
    skipped_aux_losses = ("auxk",)  # no k-sparse pre-activations to revive dead features with
    hyperparameters = ("jumprelu_bandwidth", "jumprelu_init_threshold")
    extra_tensors = ("threshold",)

    def __init__(self, cfg: SAEConfig, **kw) -> None:
        super().__init__(cfg, **kw)
        self.log_threshold = nn.Parameter(
            torch.full((cfg.num_features,), math.log(cfg.jumprelu_init_threshold), device=self.W_dec.device,
                       dtype=self.W_dec.dtype)
        )

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    def get_extra_tensor(self, name: str) -> Tensor:
        return self.threshold

    def set_extra_tensor(self, name: str, value: Tensor) -> None:
        self.log_threshold.copy_(value.log())

    def encode(self, x: Tensor, *, matmul_dtype: torch.dtype | None = None) -> SparseCodes:
        return self._encode_with(x, Threshold(self.threshold.detach()), matmul_dtype)

    @torch.no_grad()
    def init_from_sample(self, x: Tensor) -> None:
        """Thresholds at each feature's (1 - k/F) pre-activation quantile over the sample (L0 about k)."""
        n = x.shape[0]
        rank = max(1, min(n, round(n * (1 - self.cfg.k / self.num_features))))
        theta = x.new_empty(self.num_features)
        for lo in range(0, self.num_features, 1024):  # in feature blocks: [n, F] at once can be large
            w = self.enc_weight[lo:lo + 1024]
            pre = (x - self.b_dec) @ w.t() + self.b_enc[lo:lo + 1024]
            theta[lo:lo + 1024] = pre.kthvalue(rank, dim=0).values
        floor = self.cfg.jumprelu_bandwidth / 2  # keep the kernel band above zero (exact sparse gradients)
        self.log_threshold.copy_(theta.clamp_min(floor).log())

    def training_step(self, x: Tensor, ctx: StepContext) -> StepOutput:
        self.check_input(x)
        eps = self.cfg.jumprelu_bandwidth
        theta = self.threshold
        sel = (theta.detach() - eps / 2).clamp_min(0)
        (codes,) = encode(x - self.b_dec, self.W_enc, self.b_enc, [Threshold(sel)], matmul_dtype=ctx.matmul_dtype)
        th = theta[codes.cols]
        z = JumpReLUFn.apply(codes.vals, th, eps)
        l0 = StepFn.apply(codes.vals, th, eps).sum()
        zc = SparseCodes(z, codes.cols, codes.rows, codes.offsets, codes.num_features, codes.k, codes.cache)
        x_hat = sparse_decode(zc, self.W_dec, self.b_dec)
        sse = (x_hat - x).pow(2).sum()
        l0_term = l0 / ctx.denom
        loss = sse / ctx.denom + ctx.sparsity_coef * l0_term
        return StepOutput(loss, sse.detach(), fired_counts(zc), {"l0": l0_term.detach()})

    def _fold_thresholds(self, scale: float) -> None:
        self.log_threshold.sub_(math.log(scale))
