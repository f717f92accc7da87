"""Is a multi-dimensional feature irreducible? The two tests of Engels et al. 2024 ("Not All Language
Model Features Are Linear"), the paper's cheap graph clustering, and a cyclic-order test.

A point cloud f in a PC plane is *reducible* if it splits into parts a model could have stored as
separate 1-D features:
* separable: some rotation makes the two coordinates independent. The separability index is the
  minimum, over 100 rotation angles in [0, 2 pi], of the mutual information (bits) of the 10 x 10
  histogram of the rotated coordinates (the paper's binning: 10 equal bins over each coordinate's
  range). A circle keeps a high value at every angle.
* a mixture: much of the mass lies on a line, as when two features never fire together. The
  epsilon-mixture index is the largest fraction of points with |v.f + c| < epsilon * rms(v.f + c)
  over directions v and offsets c (epsilon = 0.1). The paper maximises a sigmoid relaxation of
  this by gradient ascent; here the hard count is maximised on a grid of directions and offsets
  (deterministic, and a lower bound of the same quantity).
The paper first drops points near the origin in the plane (its `--radius`), computes both indices on
PCs 1-5 of a cluster's reconstructions, and calls a cluster irreducible when the separability index
is high and the mixture index low.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor

from workbench.errors import WorkbenchError


def mutual_information_bits(x: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Mutual information (bits) of the `bins` x `bins` histogram of (x, y) over their ranges."""
    h, _, _ = np.histogram2d(np.asarray(x, float), np.asarray(y, float), bins=bins)
    joint = h / max(h.sum(), 1.0)
    px, py = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log2(joint[nz] / (px @ py)[nz])))


def separability_index(points: np.ndarray, bins: int = 10, angles: int = 100) -> tuple[float, np.ndarray]:
    """Minimum mutual information (bits) over rotations of a 2-D cloud, and the value at each angle."""
    pts = np.asarray(points, float)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise WorkbenchError(f"separability_index needs points of shape [n, 2], got {list(pts.shape)}")
    curve = np.empty(angles)
    for i, a in enumerate(np.linspace(0, 2 * np.pi, angles)):
        c, s = np.cos(a), np.sin(a)
        r = pts @ np.array([[c, -s], [s, c]])
        curve[i] = mutual_information_bits(r[:, 0], r[:, 1], bins)
    return float(curve.min()), curve


def separability_null(points: np.ndarray, shuffles: int = 100, seed: int = 0, bins: int = 10,
                      angles: int = 100) -> dict[str, float]:
    """The separability index of the same cloud with its coordinates made independent, `shuffles`
    times: rotated to its least-dependent angle, the second coordinate permuted. With few points the
    plug-in MI of a 10 x 10 histogram is far above zero even for independent coordinates (about
    81 / (2 n ln 2) bits), so an index means something only against this null of the same size and
    marginals. Returns `separability`, `null_mean`, `null_95` and `p_value` (share of null >= index)."""
    pts = np.asarray(points, float)
    s, curve = separability_index(pts, bins, angles)
    a = np.linspace(0, 2 * np.pi, angles)[int(np.argmin(curve))]
    c, si = np.cos(a), np.sin(a)
    r = pts @ np.array([[c, -si], [si, c]])
    rng = np.random.default_rng(seed)
    null = np.array([separability_index(np.stack([r[:, 0], rng.permutation(r[:, 1])], 1), bins, angles)[0]
                     for _ in range(shuffles)])
    return {"separability": s, "null_mean": float(null.mean()), "null_95": float(np.percentile(null, 95)),
            "p_value": float((1 + np.sum(null >= s)) / (1 + shuffles))}


def mixture_index(points: np.ndarray, epsilon: float = 0.1, directions: int = 180, offsets: int = 201) -> float:
    """Largest fraction of points with |v.f + c| < epsilon * sqrt(mean((v.f + c)^2)) over unit
    directions v (`directions` angles in [0, pi)) and offsets -c at `offsets` quantiles of v.f."""
    pts = np.asarray(points, float)
    n = pts.shape[0]
    if n == 0:
        return 0.0
    best = 0.0
    qs = np.linspace(0, 1, offsets)
    for th in np.linspace(0, np.pi, directions, endpoint=False):
        p = np.sort(pts @ np.array([np.cos(th), np.sin(th)]))
        c = np.quantile(p, qs)
        m1, m2 = p.mean(), np.mean(p ** 2)
        half = epsilon * np.sqrt(np.maximum(m2 - 2 * c * m1 + c ** 2, 0.0))
        inside = np.searchsorted(p, c + half, side="left") - np.searchsorted(p, c - half, side="right")
        best = max(best, float(inside.max()) / n)
    return best


def plane_indices(points: np.ndarray, n_components: int = 5, radius: float = 0.0, planes: str = "all",
                  bins: int = 10, angles: int = 100, epsilon: float = 0.1,
                  mixture_steps: int = 180) -> dict[str, object]:
    """Both indices on every plane of the top `n_components` PCs (`planes="consecutive"`: the paper's
    1-2, 2-3, ... only), after dropping points whose norm in the plane is at most `radius`.

    Returns `coords [n, k]` (the PC coordinates), `explained_variance_ratio [k]` and `planes`, one
    dict per plane: `pc_a`, `pc_b` (1-based), `n_points` kept, `separability`, `mixture`.
    """
    from sklearn.decomposition import PCA

    if planes not in ("all", "consecutive"):
        raise WorkbenchError(f"planes={planes!r}; valid choices: all, consecutive")
    x = np.asarray(points, float)
    k = min(n_components, x.shape[1], max(x.shape[0] - 1, 0))
    if k < 2:
        raise WorkbenchError(f"plane_indices needs at least 2 components; got {x.shape[0]} points of dimension {x.shape[1]}")
    pca = PCA(n_components=k).fit(x)
    coords = pca.transform(x)
    pairs = itertools.combinations(range(k), 2) if planes == "all" else ((i, i + 1) for i in range(k - 1))
    rows = []
    for a, b in pairs:
        xy = coords[:, [a, b]]
        xy = xy[np.linalg.norm(xy, axis=1) > radius]
        sep = separability_index(xy, bins, angles)[0] if len(xy) >= 2 else float("nan")
        mix = mixture_index(xy, epsilon, directions=mixture_steps) if len(xy) else float("nan")
        rows.append({"pc_a": a + 1, "pc_b": b + 1, "n_points": int(len(xy)), "separability": sep, "mixture": mix})
    return {"coords": coords, "explained_variance_ratio": pca.explained_variance_ratio_, "planes": rows}


def _adjacent_count(angles: np.ndarray) -> int:
    """How many calendar neighbours (class i and i+1, cyclically) sit next to each other in angle."""
    n = len(angles)
    pos = np.empty(n, int)
    pos[np.argsort(angles)] = np.arange(n)
    gap = np.abs(pos - np.roll(pos, -1)) % n
    return int(np.sum((gap == 1) | (gap == n - 1)))


def cyclic_order_test(means_2d: np.ndarray, permutations: int = 10_000, seed: int = 0) -> dict[str, object]:
    """Are class means (rows in calendar order: Monday..Sunday) laid out around their centroid in
    that cyclic order (either direction)? Statistic: the number of the n calendar neighbour pairs
    that are neighbours in angle (n = a perfect cycle). Null: the same layout with the class labels
    permuted at random, `permutations` times; p = (1 + #null >= observed) / (1 + permutations)."""
    m = np.asarray(means_2d, float)
    n = m.shape[0]
    if n < 4:
        raise WorkbenchError(f"a cyclic order needs at least 4 classes, got {n}")
    c = m - m.mean(0)
    ang = np.arctan2(c[:, 1], c[:, 0])
    obs = _adjacent_count(ang)
    rng = np.random.default_rng(seed)
    null = np.array([_adjacent_count(ang[rng.permutation(n)]) for _ in range(permutations)])
    return {"adjacent": obs, "classes": n, "in_cyclic_order": obs == n,
            "angular_order": np.argsort(ang).tolist(), "p_value": float((1 + np.sum(null >= obs)) / (1 + permutations)),
            "null_mean": float(null.mean())}


def engels_graph_clusters(w_dec: Tensor, top_k: int = 2, min_cos: float = 0.5, max_size: int = 1000,
                          chunk: int = 2048) -> list[list[int]]:
    """The paper's graph clustering: each feature's top `top_k` decoder similarities (the feature
    itself included, so top 2 = its nearest neighbour) above `min_cos` become undirected edges;
    connected components are the clusters, pruned to sizes 2 .. `max_size` - 1."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    w = w_dec.float()
    unit = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = unit.shape[0]
    rows, cols = [], []
    for a in range(0, n, chunk):
        v, i = torch.topk(unit[a:a + chunk] @ unit.t(), min(top_k, n), dim=1)
        keep = v > min_cos
        r = torch.arange(a, a + v.shape[0])[:, None].expand_as(i)
        rows.append(r[keep].numpy())
        cols.append(i[keep].numpy())
    rr, cc = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(rr)), (rr, cc)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    out = [np.flatnonzero(labels == lab).tolist() for lab in np.unique(labels)]
    return [c for c in out if 1 < len(c) < max_size]


def clusters_as_lists(labels: np.ndarray) -> list[list[int]]:
    """Member lists from one label per feature (as spectral clustering returns), largest first."""
    out = [np.flatnonzero(labels == lab).tolist() for lab in np.unique(labels)]
    return sorted(out, key=len, reverse=True)


def cluster_specificity(word_codes: np.ndarray, cache_codes, clusters: list[list[int]],
                        min_coverage: float = 0.5) -> dict[str, object]:
    """Score clusters for a concept (the templated day or month words) by specificity, not by mass.

    The cluster with the most activation mass on the concept words is usually a dense generic one (it
    fires on every token, the concept words included). Specificity asks instead how much more a cluster
    fires on the concept words than on an ordinary token: `lift` = mean cluster mass per concept word /
    mean cluster mass per cache token (cluster mass = sum of its members' activations on a token; inf
    where the cluster never fires on the cache). A cluster must also fire (any member > 0) on at least
    `min_coverage` of the concept words, so a tiny cluster that fires on three of them and never
    elsewhere is not picked. `score` = lift where coverage passes, else -inf; `best` = its argmax
    (None where no cluster passes). word_codes: dense [words, features]; cache_codes: dense or scipy
    sparse [tokens, features]."""
    if not 0.0 <= min_coverage <= 1.0:
        raise WorkbenchError(f"min_coverage must be in [0, 1], got {min_coverage}")
    mass, lift, coverage = [], [], []
    n_cache = cache_codes.shape[0]
    for c in clusters:
        zc = word_codes[:, c]
        m_words = float(zc.sum())
        m_cache = float(cache_codes[:, c].sum())
        mass.append(m_words)
        coverage.append(float((zc > 0).any(1).mean()) if len(zc) else 0.0)
        per_word = m_words / max(len(zc), 1)
        lift.append(per_word / (m_cache / n_cache) if m_cache > 0 else (np.inf if per_word > 0 else 0.0))
    mass, lift, coverage = np.array(mass), np.array(lift), np.array(coverage)
    score = np.where(coverage >= min_coverage, lift, -np.inf)
    best = int(score.argmax()) if len(score) and score.max() > -np.inf else None
    return {"mass": mass, "lift": lift, "coverage": coverage, "score": score, "best": best}
