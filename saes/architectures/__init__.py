"""The built-in SAE architectures, one module each; `BUILTIN` is the registry's list of them.

A new architecture is a new module here (a `SparseAutoencoder` subclass declaring its policy:
see saes.base) plus one line in `BUILTIN`. Code outside the package can add one at run time
with `saes.registry.register(cls)`. The order of `BUILTIN` is the order choices are shown in.
"""

from saes.architectures.batchtopk import BatchTopKSAE
from saes.architectures.feature_choice import FeatureChoiceSAE
from saes.architectures.jumprelu import JumpReLUSAE
from saes.architectures.matching_pursuit import MatchingPursuitSAE
from saes.architectures.mutual_choice import MutualChoiceSAE
from saes.architectures.relu import ReLUSAE
from saes.architectures.threshold_inference import ThresholdInferenceSAE
from saes.architectures.topk import TopKSAE

# What `sae train` trains when --arch is not given.
DEFAULT_ARCHITECTURE = TopKSAE.architecture

BUILTIN = (TopKSAE, BatchTopKSAE, FeatureChoiceSAE, MutualChoiceSAE, ReLUSAE, JumpReLUSAE, MatchingPursuitSAE)

__all__ = [
    "BUILTIN",
    "DEFAULT_ARCHITECTURE",
    "BatchTopKSAE",
    "FeatureChoiceSAE",
    "JumpReLUSAE",
    "MatchingPursuitSAE",
    "MutualChoiceSAE",
    "ReLUSAE",
    "ThresholdInferenceSAE",
    "TopKSAE",
]
