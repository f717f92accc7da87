"""Sparse kernels: SAE training and inference whose cost scales with k active features, not with F.

One dispatch point (`backend`): CUDA tensors run Triton kernels, everything else the torch path;
`SAE_KERNELS=torch` forces the torch path. Every SAE architecture goes through `encode` (one dense
matmul, then any number of selectors) and `sparse_decode`. `SAE_SELECT=fused` (off by default, not
yet measured on a GPU) fuses a plain TopK selection with the encoder matmul on the Triton path.

    codes, aux = encode(x - b_dec, W_enc_param.t(), b_enc, [TopK(32), TopK(512, features=dead)])
    x_hat = sparse_decode(codes, W_dec, b_dec)
"""

from saes.kernels.codes import SparseCodes, feature_index
from saes.kernels.dispatch import (
    backend,
    deterministic,
    fused_select_enabled,
    is_deterministic,
    ops_for,
    triton_available,
)
from saes.kernels.functions import encode, release_workspace, sparse_decode
from saes.kernels.selectors import (
    BatchTopK,
    FeatureChoice,
    Selection,
    Selector,
    Threshold,
    TopK,
    select,
    select_batch_topk,
    select_feature_choice,
    select_threshold,
    select_topk,
)
from saes.kernels.torch_ops import (
    bias_grad,
    decode_forward,
    decoder_weight_grad,
    encoder_input_grad,
    encoder_weight_grad,
    grad_at_active,
)

__all__ = [
    "BatchTopK",
    "FeatureChoice",
    "Selection",
    "Selector",
    "SparseCodes",
    "Threshold",
    "TopK",
    "backend",
    "bias_grad",
    "decode_forward",
    "decoder_weight_grad",
    "deterministic",
    "encode",
    "encoder_input_grad",
    "encoder_weight_grad",
    "feature_index",
    "fused_select_enabled",
    "release_workspace",
    "grad_at_active",
    "is_deterministic",
    "ops_for",
    "select",
    "select_batch_topk",
    "select_feature_choice",
    "select_threshold",
    "select_topk",
    "sparse_decode",
    "triton_available",
]
