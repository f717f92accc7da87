"""Feature dashboards from the activation cache: one resumable streaming pass, saved next to the SAE.

    from evals.features import build_features, features
    build_features("cache/quickstart/saes", "cache/quickstart/acts")
    features("cache/quickstart/saes")[123]        # a FeatureCard (renders itself in notebooks)
"""

from evals.features.build import build_features, check_compatible
from evals.features.cards import ComparisonTable, FeatureCard, FeatureSet, SAESummary, features
from evals.features.config import FeatureConfig
from evals.features.store import FeatureData
from evals.features.summary import describe_sae, sae_facts, sae_repr_html

__all__ = ["ComparisonTable", "FeatureCard", "FeatureConfig", "FeatureData", "FeatureSet", "SAESummary",
           "build_features", "check_compatible", "describe_sae", "features", "sae_facts", "sae_repr_html"]
