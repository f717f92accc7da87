"""The standard SAE: z = ReLU(W_enc (x - b_dec) + b_enc) with a decoder-norm-weighted L1 penalty.

Loss = FVU + l1_coef * sum_f z_f ||W_dec[f]|| / (mean per-token variance), i.e. the
Anthropic "April 2024 update" objective ||x - x_hat||^2 + lambda * sum_f z_f ||W_dec[f]||
expressed in FVU units, with lambda warmed up linearly from 0 (sparsity_warmup_fraction).
The decoder is not constrained to unit norm: the penalty weights each code by its row norm, so
shrinking codes by growing rows gains nothing.

Which kernels: a ReLU SAE's code is not sparse at the start of training (about half the
features are positive on a random encoder), and a sparse decode of a half-dense code is slower
than a dense matmul. So each step picks: while the previous step's density is above 1/16, the
plain dense path (dense codes, dense matmul, autograd); below it, the shared sparse kernels
(`encode` with a zero threshold, `sparse_decode`). Both compute the same function (tests check
the loss and gradients agree); inference always returns sparse codes. Where the run chooses
features on a bf16 matmul (--precision), the dense phase runs under bf16 autocast instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from saes.base import Penalty, SparseAutoencoder, StepContext, StepOutput, fired_counts
from saes.kernels import SparseCodes, Threshold, encode, sparse_decode

if TYPE_CHECKING:
    from saes.config import SAEConfig

DENSE_ABOVE = 1 / 16


def dense_relu_forward(x: Tensor, enc_weight: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor,
                       norms: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """x_hat, the weighted L1 sum and per-feature firing counts on the dense path (compilable)."""
    z = F.linear(x - b_dec, enc_weight, b_enc).relu()
    x_hat = z @ W_dec + b_dec
    return x_hat, (z @ norms).sum(), (z.detach() > 0).sum(0)


class ReLUSAE(SparseAutoencoder):
    architecture = "relu"
    uses_k = False
    penalty = Penalty("l1", coef_field="l1_coef", default_coef=5.0,
                      help="decoder-norm-weighted L1 coefficient (per-token sse units)")
    skipped_aux_losses = ("auxk",)  # no k-sparse pre-activations to revive dead features with
    unit_norm_decoder = False

    def __init__(self, cfg: SAEConfig, **kw) -> None:
        super().__init__(cfg, **kw)
        # Density of the previous training step's code; decides dense vs sparse path.
        self.register_buffer("last_density", torch.ones((), device=self.W_dec.device))
        self._dense = dense_relu_forward

    def compile_dense_parts(self) -> None:
        self._dense = torch.compile(dense_relu_forward, fullgraph=True)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Decoder rows in random directions with norm 0.1, encoder its transpose (Anthropic 2024)."""
        super().reset_parameters(generator)
        self.W_dec.mul_(0.1)
        self.enc_weight.mul_(0.1)

    def encode(self, x: Tensor, *, matmul_dtype: torch.dtype | None = None) -> SparseCodes:
        return self._encode_with(x, Threshold(torch.zeros_like(self.b_enc.detach())), matmul_dtype)

    def training_step(self, x: Tensor, ctx: StepContext, path: str = "auto") -> StepOutput:
        self.check_input(x)
        if path == "auto":
            path = "dense" if float(self.last_density) > DENSE_ABOVE else "sparse"
        norms = self.W_dec.norm(dim=1)
        if path == "dense":
            # With bf16 selection asked for (CUDA, or a CPU with bf16 units), the dense phase runs
            # its matmuls under bf16 autocast; the loss is summed in fp32.
            low = ctx.matmul_dtype == torch.bfloat16
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=low):
                x_hat, l1, fired = self._dense(x, self.enc_weight, self.b_enc, self.W_dec, self.b_dec, norms)
            x_hat, l1 = x_hat.to(x.dtype), l1.to(x.dtype)
        else:
            (codes,) = encode(x - self.b_dec, self.W_enc, self.b_enc,
                              [Threshold(torch.zeros_like(self.b_enc.detach()))], matmul_dtype=ctx.matmul_dtype)
            x_hat = sparse_decode(codes, self.W_dec, self.b_dec)
            l1 = (codes.vals * norms[codes.cols]).sum()
            fired = fired_counts(codes)
        sse = (x_hat - x).pow(2).sum()
        l1_term = l1 / ctx.denom
        loss = sse / ctx.denom + ctx.sparsity_coef * l1_term
        with torch.no_grad():  # over the global batch, so every rank takes the same path next step
            active = ctx.reduce(fired.sum().to(torch.float64).view(1), "sum")
            self.last_density.fill_(float(active) / (ctx.n_tokens * self.num_features))
        return StepOutput(loss, sse.detach(), fired, {"l1": l1_term.detach()})
