"""Matching Pursuit SAE (MP-SAE, Costa et al. 2025): the encoder is k steps of matching pursuit.

Starting from r = x - b_dec, each step picks the dictionary atom (decoder row, taken as a unit
direction) with the largest positive correlation with the residual, records the coefficient
and subtracts its contribution; a token stops early when no atom correlates positively. There is
no separate encoder: `W_enc` is saved as W_dec^T only so the file has the common layout.

Cost: the choices need the correlations of every residual with every atom at every step. With
the Gram matrix G = D D^T they are updated in place (C -= c * G[j], O(B F) per step) instead of
recomputed (O(B F d) per step); G is used while it fits in `GRAM_BYTES`. The choices are made
without gradients; the coefficients are then recomputed differentiably along the chosen atoms
(O(B k d)), so training backpropagates through the unrolled pursuit into the dictionary and
b_dec, and the code is decoded with the sparse kernels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from saes.base import SparseAutoencoder, StepContext, StepOutput, fired_counts
from saes.kernels import SparseCodes, sparse_decode

if TYPE_CHECKING:
    from saes.config import SAEConfig

GRAM_BYTES = 1 << 30


@torch.no_grad()
def pursuit_choices(r0: Tensor, atoms: Tensor, k: int, gram_bytes: int = GRAM_BYTES) -> tuple[Tensor, Tensor]:
    """Atom ids `[B, k]` chosen by matching pursuit over unit-norm `atoms [F, d]`, and which steps were live."""
    b, f = r0.shape[0], atoms.shape[0]
    idx = torch.zeros(b, k, dtype=torch.long, device=r0.device)
    live = torch.zeros(b, k, dtype=torch.bool, device=r0.device)
    corr = r0 @ atoms.t()
    use_gram = f * f * corr.element_size() <= gram_bytes
    gram = atoms @ atoms.t() if use_gram else None
    r = None if use_gram else r0.clone()
    for t in range(k):
        c, j = corr.max(dim=1)
        ok = c > 0
        c = c.clamp_min(0)
        idx[:, t] = j
        live[:, t] = ok
        if gram is not None:
            corr.sub_(gram.index_select(0, j).mul_(c[:, None]))
        else:
            r.sub_(c[:, None] * atoms.index_select(0, j))
            corr = r @ atoms.t()
    return idx, live


def pursuit_coefficients(r0: Tensor, atoms: Tensor, idx: Tensor, live: Tensor) -> Tensor:
    """Differentiable coefficients `[B, k]` of the pursuit along the chosen atoms (unit-atom units)."""
    r = r0
    out = []
    for t in range(idx.shape[1]):
        a = F.embedding(idx[:, t], atoms)
        c = (r * a).sum(1).relu() * live[:, t]
        r = r - c[:, None] * a
        out.append(c)
    return torch.stack(out, 1)


class MatchingPursuitSAE(SparseAutoencoder):
    architecture = "matching_pursuit"
    skipped_aux_losses = ("auxk",)  # no encoder pre-activations to revive dead features with

    def __init__(self, cfg: SAEConfig, **kw) -> None:
        super().__init__(cfg, **kw)
        # No learned encoder: keep the tensors for the common layout, out of the optimiser.
        self.enc_weight.requires_grad_(False)
        self.b_enc.requires_grad_(False)

    def pursuit_codes(self, x: Tensor) -> SparseCodes:
        self.check_input(x)
        norms = self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        atoms = self.W_dec / norms
        r0 = x - self.b_dec
        idx, live = pursuit_choices(r0.detach(), atoms.detach(), self.cfg.k)
        coef = pursuit_coefficients(r0, atoms, idx, live)
        # Coefficient along the unit atom -> code value for the (possibly non-unit) decoder row.
        vals = coef / norms.squeeze(1)[idx]
        return SparseCodes.from_topk(vals, idx, self.num_features)

    def encode(self, x: Tensor, *, matmul_dtype: torch.dtype | None = None) -> SparseCodes:
        return self.pursuit_codes(x)

    def training_step(self, x: Tensor, ctx: StepContext) -> StepOutput:
        codes = self.pursuit_codes(x)
        x_hat = sparse_decode(codes, self.W_dec, self.b_dec)
        sse = (x_hat - x).pow(2).sum()
        return StepOutput(sse / ctx.denom, sse.detach(), fired_counts(codes), {})

    def weight_tensors(self) -> dict[str, Tensor]:
        out = super().weight_tensors()
        out["W_enc"] = self.W_dec.detach().t().contiguous()
        out["b_enc"] = torch.zeros_like(self.b_enc)
        return out
