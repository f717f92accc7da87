"""Sparse autoencoders: architectures, losses, kernels, trainer and file formats.

    from saes import TrainConfig, train, load_sae
    summary = train(TrainConfig(cache="cache/smollm2-wiki-1m", hook=("blocks.8.hook_resid_post",),
                                arch=("topk",), k=(32,), expansion=(8,), out="cache/saes/run1"))
    sae = load_sae("cache/saes/run1")          # the run's one SAE (or pass its subdirectory)
    codes = sae.encode(activations)            # SparseCodes; sae.decode(codes) reconstructs

Architectures live in saes/architectures/ (one module each), listed by `saes.registry`; all
share `SparseAutoencoder`'s interface and saved format, and each declares its own training
policy (k or penalty, aux losses, inference rules). `register(cls)` adds one at run time;
`saes.registry.architectures()` lists the names. `evaluate_heldout` (saes.heldout) is the
held-out evaluation the trainer reports, for evaluation code to reuse.
"""

from saes.architectures import (
    BatchTopKSAE,
    FeatureChoiceSAE,
    JumpReLUSAE,
    MatchingPursuitSAE,
    MutualChoiceSAE,
    ReLUSAE,
    ThresholdInferenceSAE,
    TopKSAE,
)
from saes.base import Penalty, SparseAutoencoder, StepContext, StepOutput
from saes.config import ARCHITECTURES, SAEConfig, TrainConfig, sae_name
from saes.data import ActivationSource, TensorSource, open_cache
from saes.geometric_median import geometric_median
from saes.heldout import evaluate_heldout
from saes.kernels import SparseCodes
from saes.losses import fvu
from saes.registry import build_sae, register, sae_class
from saes.storage import find_sae_dirs, load_sae, load_stats, read_sae_cfg, save_sae
from saes.trainer import Trainer, train
from saes.whitening import Whitening, fit_whitening, fold_whitening
from saes.formats import export_saelens, export_sparsify, find_any, load_any  # last: formats builds on the above

__all__ = [
    "Whitening",
    "fit_whitening",
    "fold_whitening",
    "export_saelens",
    "export_sparsify",
    "find_any",
    "load_any",
    "ARCHITECTURES",
    "ActivationSource",
    "BatchTopKSAE",
    "FeatureChoiceSAE",
    "JumpReLUSAE",
    "MatchingPursuitSAE",
    "MutualChoiceSAE",
    "Penalty",
    "ReLUSAE",
    "SAEConfig",
    "SparseAutoencoder",
    "SparseCodes",
    "StepContext",
    "StepOutput",
    "TensorSource",
    "ThresholdInferenceSAE",
    "TopKSAE",
    "TrainConfig",
    "Trainer",
    "build_sae",
    "evaluate_heldout",
    "find_sae_dirs",
    "fvu",
    "geometric_median",
    "load_sae",
    "load_stats",
    "read_sae_cfg",
    "open_cache",
    "register",
    "sae_class",
    "sae_name",
    "save_sae",
    "train",
]
