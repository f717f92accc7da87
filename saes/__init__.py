"""Sparse autoencoders: architectures, losses, kernels, trainer and file formats.

    from saes import TrainConfig, train, load_sae
    summary = train(TrainConfig(cache="cache/smollm2-wiki-1m", hook=("blocks.8.hook_resid_post",),
                                arch=("topk",), k=(32,), expansion=(8,), out="cache/saes/run1"))
    sae = load_sae("cache/saes/run1")          # the run's one SAE (or pass its subdirectory)
    codes = sae.encode(activations)            # SparseCodes; sae.decode(codes) reconstructs

Architectures (saes.registry): topk, batchtopk, feature_choice, mutual_choice, relu, jumprelu,
matching_pursuit. All share `SparseAutoencoder`'s interface and saved format.
"""

from saes.base import SparseAutoencoder, StepContext, StepOutput
from saes.batchtopk import BatchTopKSAE, ThresholdInferenceSAE
from saes.config import ARCHITECTURES, SAEConfig, TrainConfig, sae_name
from saes.data import ActivationSource, TensorSource, open_cache
from saes.feature_choice import FeatureChoiceSAE, MutualChoiceSAE
from saes.geometric_median import geometric_median
from saes.jumprelu import JumpReLUSAE
from saes.kernels import SparseCodes
from saes.losses import fvu
from saes.matching_pursuit import MatchingPursuitSAE
from saes.registry import architectures, build_sae, sae_class
from saes.relu import ReLUSAE
from saes.storage import find_sae_dirs, load_sae, load_stats, save_sae
from saes.topk import TopKSAE
from saes.trainer import Trainer, train

__all__ = [
    "ARCHITECTURES",
    "ActivationSource",
    "BatchTopKSAE",
    "FeatureChoiceSAE",
    "JumpReLUSAE",
    "MatchingPursuitSAE",
    "MutualChoiceSAE",
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
    "architectures",
    "build_sae",
    "find_sae_dirs",
    "fvu",
    "geometric_median",
    "load_sae",
    "load_stats",
    "open_cache",
    "sae_class",
    "sae_name",
    "save_sae",
    "train",
]
