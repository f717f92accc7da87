"""Geometry of the decoder directions alone: covariance spectrum and a 2-D map of all features."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def covariance_spectrum(w_dec: Tensor) -> Tensor:
    """Eigenvalues of the covariance of the decoder directions, largest first."""
    w = w_dec.double()
    w = w - w.mean(0, keepdim=True)
    cov = w.t() @ w / max(w.shape[0] - 1, 1)
    return torch.linalg.eigvalsh(cov).flip(0).clamp_min(0)


def power_law_slope(eigenvalues: Tensor, skip: int = 1, tail: float = 0.1) -> tuple[float, float]:
    """Slope and intercept of log(eigenvalue) against log(rank) (Li et al. 2024 fit a power law).

    The first `skip` eigenvalues (the mean-like directions) and the last `tail` fraction (the
    numerical floor) are left out of the least-squares fit.
    """
    ev = eigenvalues.double().numpy()
    n = len(ev)
    hi = max(skip + 2, int(n * (1 - tail)))
    ranks = np.arange(1, n + 1)[skip:hi]
    vals = ev[skip:hi]
    ok = vals > 0
    slope, intercept = np.polyfit(np.log(ranks[ok]), np.log(vals[ok]), 1)
    return float(slope), float(intercept)


def feature_map(w_dec: Tensor, seed: int = 0, neighbours: int = 15) -> np.ndarray:
    """2-D coordinates of every feature: a spectral embedding of the cosine nearest-neighbour graph
    of decoder directions (features pointing alike land together), scaled to [0, 1]."""
    from sklearn.manifold import SpectralEmbedding

    unit = (w_dec.float() / w_dec.float().norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()
    n = unit.shape[0]
    try:
        emb = SpectralEmbedding(n_components=2, affinity="nearest_neighbors", n_neighbors=min(neighbours, n - 1),
                                random_state=seed).fit_transform(unit)
    except Exception:  # noqa: BLE001 - a disconnected or tiny graph: fall back to PCA
        from sklearn.decomposition import PCA

        emb = PCA(n_components=2, random_state=seed).fit_transform(unit)
    lo, hi = emb.min(0), emb.max(0)
    return (emb - lo) / np.where(hi > lo, hi - lo, 1.0)
