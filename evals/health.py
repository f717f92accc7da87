"""Feature health: how often each feature fires, and what its weights look like.

Firing statistics come from the SAE's sparse codes, so a pass over a cache costs one encode per
batch plus O(active entries) bookkeeping, and the state is a few `[F]` vectors whatever the
number of tokens. Density = #tokens on which the feature is non-zero / #tokens; a feature is
*dead* at density 0 and *dense* above 1% (and, separately counted, 10%).

Weight metrics: per feature, the cosine between its encoder column and its decoder row (an SAE
whose encoder has drifted far from its decoder reads features off other directions than it
writes them), and the mean over features of the largest cosine to any *other* decoder row
(duplicated or split features push it towards 1); the same for encoder columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

# Bins of the log10-density histogram: [-10, 0] in steps of 0.25 (dead features are counted apart).
LOG_DENSITY_BINS = torch.linspace(-10.0, 0.0, 41)


@dataclass
class FeatureStats:
    """Running per-feature firing counts, activation sums and maxima."""

    num_features: int
    tokens: int = 0
    fired: Tensor = field(init=False)
    act_sum: Tensor = field(init=False)
    act_max: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.fired = torch.zeros(self.num_features, dtype=torch.int64)
        self.act_sum = torch.zeros(self.num_features, dtype=torch.float64)
        self.act_max = torch.zeros(self.num_features, dtype=torch.float32)

    @torch.no_grad()
    def update(self, cols: Tensor, vals: Tensor, batch_tokens: int) -> None:
        """Add one batch's active entries (feature ids `cols`, values `vals`) over `batch_tokens` tokens."""
        nz = vals != 0
        cols, vals = cols[nz], vals[nz].float()
        self.tokens += batch_tokens
        self.fired += torch.bincount(cols, minlength=self.num_features).cpu()
        self.act_sum += torch.bincount(cols, weights=vals.double(), minlength=self.num_features).cpu()
        mx = torch.zeros(self.num_features, dtype=torch.float32, device=vals.device)
        mx.scatter_reduce_(0, cols, vals, reduce="amax")
        torch.maximum(self.act_max, mx.cpu(), out=self.act_max)

    @property
    def density(self) -> Tensor:
        return self.fired.double() / max(self.tokens, 1)

    def summary(self) -> dict[str, Any]:
        dens = self.density
        f = self.num_features
        alive = dens > 0
        logd = torch.log10(dens[alive]).float()
        hist = torch.histc(logd.clamp(-10, 0), bins=LOG_DENSITY_BINS.numel() - 1, min=-10.0, max=0.0)
        return {
            "tokens": self.tokens,
            "num_features": f,
            "dead": int((~alive).sum()),
            "dead_pct": 100.0 * float((~alive).sum()) / f,
            "dense_1pct": int((dens > 0.01).sum()),
            "dense_10pct": int((dens > 0.10).sum()),
            "density_mean": float(dens.mean()),
            "density_median_alive": float(dens[alive].median()) if alive.any() else 0.0,
            "log10_density_hist": {"edges": [round(float(e), 4) for e in LOG_DENSITY_BINS],
                                   "counts": [int(c) for c in hist], "dead": int((~alive).sum())},
            "min_detectable_density": 1.0 / self.tokens if self.tokens else math.nan,
        }

    def per_feature(self) -> dict[str, Tensor]:
        """Per-feature tensors saved next to eval.json (the inspection tools read them)."""
        mean_when_active = (self.act_sum / self.fired.clamp_min(1)).float()
        return {"density": self.density.float(), "fired": self.fired, "mean_act_when_active": mean_when_active,
                "max_act": self.act_max}


@torch.no_grad()
def max_cosine_to_others(rows: Tensor, chunk: int = 1024) -> Tensor:
    """For each row, its largest cosine to any other row, `[F]`; chunked so memory is O(chunk x F)."""
    w = rows.float()
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    out = torch.empty(w.shape[0], dtype=torch.float32, device=w.device)
    for s in range(0, w.shape[0], chunk):
        sim = w[s:s + chunk] @ w.T
        idx = torch.arange(s, min(s + chunk, w.shape[0]), device=w.device)
        sim[idx - s, idx] = -math.inf
        out[s:s + chunk] = sim.max(dim=1).values
    return out.cpu()


@torch.no_grad()
def weight_stats(W_enc: Tensor, W_dec: Tensor) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Encoder-decoder cosine per feature and mean max cosines (`W_enc [d, F]`, `W_dec [F, d]`)."""
    enc = W_enc.T.float()
    dec = W_dec.float()
    cos = torch.nn.functional.cosine_similarity(enc, dec, dim=1).cpu()
    dec_max = max_cosine_to_others(dec)
    enc_max = max_cosine_to_others(enc)
    summary = {
        "enc_dec_cos_mean": float(cos.mean()),
        "enc_dec_cos_median": float(cos.median()),
        "mean_max_decoder_cos": float(dec_max.mean()),
        "mean_max_encoder_cos": float(enc_max.mean()),
        "decoder_norm_mean": float(dec.norm(dim=1).mean()),
    }
    return summary, {"enc_dec_cos": cos, "max_decoder_cos": dec_max}
