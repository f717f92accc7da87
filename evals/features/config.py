"""What the dashboard pass collects per feature; every field is also a `sae browse` flag."""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.errors import WorkbenchError


def _h(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class FeatureConfig:
    top_k: int = field(default=20, metadata=_h("top-activating contexts kept per feature"))
    context: int = field(default=5, metadata=_h("tokens shown either side of an activating token (same context only)"))
    intervals: int = field(default=10, metadata=_h("equal-width activation intervals with random samples (quantile view)"))
    samples: int = field(default=5, metadata=_h("random samples per activation interval"))
    fine_bins: int = field(default=160, metadata=_h("resolution of the running activation grid behind intervals and histograms"))
    histogram_bins: int = field(default=40, metadata=_h("bins of the activation histogram"))
    logit_tokens: int = field(default=10, metadata=_h("top and bottom logit-lens tokens per feature"))
    neighbours: int = field(default=10, metadata=_h("correlated features and nearest decoder directions per feature"))
    corr_features: int = field(default=6144, metadata=_h(
        "features whose pairwise co-moments are tracked for Pearson correlation and co-occurrence "
        "(memory grows with its square; above it, the most frequently firing ones)"))
    chunk_tokens: int = field(default=256, metadata=_h("tokens per chunk for feature co-occurrence (geometry)"))
    top_images: int = field(default=8, metadata=_h("top images per feature (vision caches)"))
    batch_size: int = field(default=4096, metadata=_h("tokens encoded at once"))
    checkpoint_every: int = field(default=4, metadata=_h("shards between checkpoints of the running state (resume)"))
    seed: int = field(default=0, metadata=_h("seed of the interval samples"))

    def __post_init__(self) -> None:
        for name in ("top_k", "intervals", "samples", "fine_bins", "histogram_bins", "logit_tokens", "neighbours",
                     "chunk_tokens", "top_images", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise WorkbenchError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.context < 0 or self.corr_features < 0:
            raise WorkbenchError("context and corr_features must be >= 0")
        if self.fine_bins < 4 * self.intervals:
            raise WorkbenchError(f"fine_bins ({self.fine_bins}) must be at least 4 x intervals ({self.intervals})")
