"""TopK SAE (Gao et al. 2024): z = TopK(W_enc (x - b_dec) + b_enc), x_hat = W_dec z + b_dec.

Each token keeps exactly its k largest pre-activations (then ReLU), so sparsity is set directly
rather than through a penalty. Decoder rows are unit-norm; dead features are revived with AuxK.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saes.base import SparseAutoencoder, StepContext, StepOutput, selector_training_step
from saes.kernels import SparseCodes, TopK


class TopKSAE(SparseAutoencoder):
    architecture = "topk"
    aux_losses = ("auxk",)
    default_aux = "auxk"
    feature_parallel = True

    def encode(self, x: Tensor, *, matmul_dtype: torch.dtype | None = None) -> SparseCodes:
        return self._encode_with(x, TopK(self.cfg.k), matmul_dtype)

    def training_step(self, x: Tensor, ctx: StepContext) -> StepOutput:
        k, f = self.cfg.k, self.num_features
        multi = TopK(min(4 * k, f)) if ctx.multi_topk else None
        out, _ = selector_training_step(self, x, ctx, TopK(k), multi, self.aux_selector(ctx))
        return out
