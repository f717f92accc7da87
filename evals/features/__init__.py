"""Feature dashboards from the activation cache: one resumable streaming pass, saved next to the SAE.

    from evals.features import build_features, features
    build_features("cache/quickstart/saes", "cache/quickstart/acts")
    features("cache/quickstart/saes")[123]        # a FeatureCard (renders itself in notebooks)
"""

from evals.features.build import build_features, check_compatible
from evals.features.config import FeatureConfig
from evals.features.store import FeatureData

__all__ = ["FeatureConfig", "FeatureData", "build_features", "check_compatible"]
