"""Feature geometry after "The Geometry of Concepts" (Li, Michaud, Tegmark et al. 2024).

Two ways to group features, compared by adjusted mutual information:
* functional "lobes": features that fire in the same chunks of text. From chunk co-occurrence
  counts (collected by the dashboard pass) the phi coefficient of every pair,
  `(n11 n00 - n10 n01) / sqrt(n1. n0. n.1 n.0)`, and spectral clustering on `phi + 1`;
* geometric clusters: spectral clustering on the angular similarity of decoder directions,
  `1 - arccos(cos) / pi`.
If the two partitions share information well above zero, features that co-occur also point
in similar directions: the dictionary's geometry is modular.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from workbench.errors import WorkbenchError


def phi_coefficients(cooc: Tensor, chunks: int) -> Tensor:
    """Phi of every pair from chunk co-occurrence counts (`cooc[i, i]`: chunks where i fires)."""
    n = float(chunks)
    n11 = cooc.double()
    n1 = torch.diagonal(n11)
    a, b = n1[:, None], n1[None, :]
    num = n11 * (n - a - b + n11) - (a - n11) * (b - n11)
    den = torch.sqrt(a * (n - a) * b * (n - b))
    phi = torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros((), dtype=torch.float64))
    return phi.float()


def angular_similarity(w_dec: Tensor) -> Tensor:
    """`1 - arccos(cos(d_i, d_j)) / pi` in [0, 1] for every pair of decoder directions."""
    unit = w_dec.float() / w_dec.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = (unit @ unit.t()).clamp(-1, 1)
    return 1 - torch.arccos(cos) / torch.pi


def spectral_clusters(affinity: Tensor, n_clusters: int, seed: int = 0) -> np.ndarray:
    """Spectral clustering on a precomputed non-negative affinity matrix; one label per row."""
    from sklearn.cluster import SpectralClustering

    if affinity.shape[0] <= n_clusters:
        raise WorkbenchError(f"{n_clusters} clusters need more than {affinity.shape[0]} features")
    a = affinity.double().clamp_min(0).numpy()
    a = (a + a.T) / 2
    model = SpectralClustering(n_clusters=n_clusters, affinity="precomputed", random_state=seed,
                               assign_labels="cluster_qr")
    return model.fit_predict(a)


def cooccurrence_clusters(cooc: Tensor, chunks: int, n_clusters: int, seed: int = 0) -> np.ndarray:
    return spectral_clusters(phi_coefficients(cooc, chunks) + 1, n_clusters, seed)


def geometric_clusters(w_dec: Tensor, n_clusters: int, seed: int = 0) -> np.ndarray:
    return spectral_clusters(angular_similarity(w_dec), n_clusters, seed)


def cluster_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted mutual information of two partitions (0: chance, 1: identical)."""
    from sklearn.metrics import adjusted_mutual_info_score

    return float(adjusted_mutual_info_score(a, b))


def lobes_vs_geometry(cooc: Tensor, chunks: int, w_dec: Tensor, tracked: Tensor, n_clusters: int = 8,
                      seed: int = 0, alive: Tensor | None = None) -> dict[str, object]:
    """Both partitions of the tracked, alive features and their AMI (plus a shuffled baseline)."""
    keep = torch.diagonal(cooc) > 0 if alive is None else alive[tracked]
    idx = keep.nonzero().squeeze(1)
    func = cooccurrence_clusters(cooc[idx][:, idx], chunks, n_clusters, seed)
    geo = geometric_clusters(w_dec[tracked[idx]], n_clusters, seed)
    rng = np.random.default_rng(seed)
    return {"features": tracked[idx], "cooccurrence": func, "geometric": geo,
            "ami": cluster_agreement(func, geo), "ami_shuffled": cluster_agreement(rng.permutation(func), geo)}


def neighbour_clusters(w_dec: Tensor, neighbours: int = 3, min_cos: float = 0.5) -> np.ndarray:
    """Engels et al.'s cheap clustering: link each feature to its top `neighbours` decoder
    neighbours with cosine above `min_cos`, then take connected components (singletons included)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from evals.features.lens import nearest_decoders

    ids, vals = nearest_decoders(w_dec.float(), neighbours)
    keep = (vals > min_cos) & (ids >= 0)
    rows = torch.arange(w_dec.shape[0])[:, None].expand_as(ids)[keep].numpy()
    cols = ids[keep].numpy()
    n = w_dec.shape[0]
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1]
