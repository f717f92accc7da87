"""Geometry of the decoder directions alone: covariance spectrum and a 2-D map of all features (UMAP or
spectral), with the map's clusters and their outlines."""

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


MAP_METHODS = ("umap", "spectral")


def _unit(w_dec: Tensor) -> np.ndarray:
    return (w_dec.float() / w_dec.float().norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()


def _scaled(emb: np.ndarray) -> np.ndarray:
    lo, hi = emb.min(0), emb.max(0)
    return (emb - lo) / np.where(hi > lo, hi - lo, 1.0)


def feature_map(w_dec: Tensor, seed: int = 0, neighbours: int = 15, method: str = "umap") -> np.ndarray:
    """2-D coordinates of every feature, scaled to [0, 1], from its decoder direction alone.

    `umap` (the default, Neuronpedia's choice): UMAP (umap-learn) with cosine distance, which
    keeps groups of features that point alike together and apart from other groups; a dictionary
    of thousands of directions spreads into readable islands. `spectral`: the older spectral
    embedding of the cosine nearest-neighbour graph; it keeps only the graph's two slowest
    modes, so most features of a large SAE collapse into one blob (kept for comparison)."""
    if method not in MAP_METHODS:
        from workbench.errors import WorkbenchError

        raise WorkbenchError(f"unknown feature map method {method!r}; valid choices: {', '.join(MAP_METHODS)}")
    unit = _unit(w_dec)
    n = unit.shape[0]
    if n < 4:  # too few points for either embedding: PCA (or the points themselves)
        from sklearn.decomposition import PCA

        emb = PCA(n_components=2).fit_transform(unit) if n >= 2 else np.zeros((n, 2))
        return _scaled(emb)
    if method == "umap":
        import warnings

        import umap

        with warnings.catch_warnings():  # a fixed random_state turns off parallelism: umap warns about it
            warnings.simplefilter("ignore")
            emb = umap.UMAP(n_components=2, n_neighbors=min(neighbours, n - 1), metric="cosine", min_dist=0.1,
                            random_state=seed, init="spectral" if n > 2 * neighbours else "random",
                            ).fit_transform(unit)
        return _scaled(np.asarray(emb, dtype=np.float64))
    from sklearn.manifold import SpectralEmbedding

    try:
        emb = SpectralEmbedding(n_components=2, affinity="nearest_neighbors", n_neighbors=min(neighbours, n - 1),
                                random_state=seed).fit_transform(unit)
    except Exception:  # noqa: BLE001 - a disconnected or tiny graph: fall back to PCA
        from sklearn.decomposition import PCA

        emb = PCA(n_components=2, random_state=seed).fit_transform(unit)
    return _scaled(emb)


def map_clusters(coords: np.ndarray, min_size: int = 0) -> np.ndarray:
    """Cluster label of each point of a 2-D map (-1: in no cluster), by HDBSCAN on the map itself.

    The outlines the browser draws: groups the eye sees on the map, found where the map is dense
    (HDBSCAN needs no number of clusters). `min_size` (default: n / 100, at least 5) is the
    smallest group outlined."""
    from sklearn.cluster import HDBSCAN

    n = len(coords)
    size = min_size or max(5, n // 100)
    if n < 2 * size:
        return np.full(n, -1)
    return HDBSCAN(min_cluster_size=size, copy=True).fit_predict(np.asarray(coords, dtype=np.float64))


def cluster_outlines(coords: np.ndarray, labels: np.ndarray) -> dict[int, np.ndarray]:
    """The convex hull (vertices in order) of each cluster with at least 3 non-collinear points."""
    from scipy.spatial import ConvexHull, QhullError

    out = {}
    for c in sorted(set(labels.tolist()) - {-1}):
        pts = coords[labels == c]
        if len(pts) < 3:
            continue
        try:
            out[int(c)] = pts[ConvexHull(pts).vertices]
        except QhullError:
            continue
    return out
