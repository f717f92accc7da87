"""Brain- and galaxy-scale measures of "The Geometry of Concepts" (Li, Michaud, Tegmark et al. 2024),
with the intervals and nulls a small model needs:

* the lobe analysis swept over cluster counts, each count against a permutation null of the AMI
  (co-occurrence labels shuffled many times, not once);
* the slope of the decoder covariance spectrum with a bootstrap interval over features;
* the clustering entropy (negentropy): the entropy of a Gaussian with the point cloud's covariance
  minus a k-nearest-neighbour (Kozachenko-Leonenko) estimate of the cloud's entropy, after the
  paper's standardisation and PCA to 100 components. The estimator is biased in many dimensions,
  so the same number for Gaussian samples with the same spectrum and size is reported beside it
  (`excess` = the difference: clustering beyond what the estimator gives a Gaussian).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from evals.geometry.clusters import cluster_agreement, cooccurrence_clusters, geometric_clusters
from evals.geometry.decoder import covariance_spectrum, power_law_slope


def lobe_sweep(cooc: Tensor, chunks: int, w_dec: Tensor, tracked: Tensor, ks: list[int], shuffles: int = 200,
               seed: int = 0, alive: Tensor | None = None) -> list[dict[str, float]]:
    """For each cluster count k: AMI of co-occurrence lobes and decoder-geometry clusters of the
    tracked, alive features, and its permutation null (lobe labels shuffled `shuffles` times):
    `null_mean`, `null_95`, `p_value` = (1 + #null >= ami) / (1 + shuffles)."""
    keep = torch.diagonal(cooc) > 0 if alive is None else alive[tracked]
    idx = keep.nonzero().squeeze(1)
    sub = cooc[idx][:, idx]
    w = w_dec[tracked[idx]]
    rng = np.random.default_rng(seed)
    out = []
    for k in ks:
        func = cooccurrence_clusters(sub, chunks, k, seed)
        geo = geometric_clusters(w, k, seed)
        ami = cluster_agreement(func, geo)
        null = np.array([cluster_agreement(rng.permutation(func), geo) for _ in range(shuffles)])
        out.append({"k": k, "features": int(len(idx)), "ami": ami, "null_mean": float(null.mean()),
                    "null_95": float(np.percentile(null, 95)),
                    "p_value": float((1 + np.sum(null >= ami)) / (1 + shuffles))})
    return out


def spectrum_slope_interval(w_dec: Tensor, skip: int = 1, tail: float = 0.1, bootstrap: int = 200,
                            seed: int = 0) -> dict[str, object]:
    """Power-law slope of the decoder covariance spectrum with two 95% intervals: the paper's (t times
    the standard error of the log-log regression, which treats ranks as independent and is too
    narrow) and a percentile bootstrap over features (rows resampled with replacement). Resampling
    spreads a spectrum, so the bootstrap is biased towards steeper slopes on large matrices; its mean
    is returned so the bias shows (`bootstrap_mean` - `slope`)."""
    from scipy.stats import t as student_t

    w = torch.as_tensor(w_dec).double()
    ev = covariance_spectrum(w)
    slope, intercept = power_law_slope(ev, skip=skip, tail=tail)
    n = len(ev)
    hi = max(skip + 2, int(n * (1 - tail)))
    lx = np.log(np.arange(1, n + 1)[skip:hi])
    ly = np.log(ev.numpy()[skip:hi])
    ok = np.isfinite(ly)
    lx, ly = lx[ok], ly[ok]
    resid = ly - (slope * lx + intercept)
    se = math.sqrt(np.sum(resid ** 2) / max(len(lx) - 2, 1) / np.sum((lx - lx.mean()) ** 2))
    half = float(student_t.ppf(0.975, max(len(lx) - 2, 1)) * se)
    g = torch.Generator().manual_seed(seed)
    boots = []
    for _ in range(bootstrap):
        i = torch.randint(0, w.shape[0], (w.shape[0],), generator=g)
        boots.append(power_law_slope(covariance_spectrum(w[i]), skip=skip, tail=tail)[0])
    return {"slope": slope, "intercept": intercept, "regression_interval": [slope - half, slope + half],
            "interval": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
            "bootstrap_mean": float(np.mean(boots))}


def _knn_entropy(x: np.ndarray, k: int = 1) -> float:
    """Kozachenko-Leonenko entropy estimate (nats): psi(n) - psi(k) + log V_d + d mean(log rho_k)."""
    from scipy.special import digamma, gammaln
    from sklearn.neighbors import NearestNeighbors

    n, d = x.shape
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    rho = np.maximum(dist[:, k], 1e-12)
    log_vd = d / 2 * math.log(math.pi) - gammaln(d / 2 + 1)
    return float(digamma(n) - digamma(k) + log_vd + d * np.mean(np.log(rho)))


def _gauss_entropy(eigenvalues: np.ndarray) -> float:
    ev = np.maximum(eigenvalues, 1e-12)
    return float(len(ev) / 2 * (1 + math.log(2 * math.pi)) + 0.5 * np.sum(np.log(ev)))


def _negentropy(x: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    ev = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
    return _gauss_entropy(ev) - _knn_entropy(x, k), ev


def clustering_entropy(points: np.ndarray, n_components: int = 100, k: int = 1, repeats: int = 30,
                       fraction: float = 0.8, seed: int = 0) -> dict[str, object]:
    """Negentropy of a point cloud (decoder rows) after standardising each coordinate and PCA to
    `n_components`, the same for a Gaussian sample of the same size and spectrum (`null`), their
    difference `excess`, and a 95% interval of the excess over `repeats` subsamples of `fraction`
    of the points without replacement (a bootstrap would duplicate points and break the
    nearest-neighbour distances), each against its own Gaussian of the subsample's size."""
    from sklearn.decomposition import PCA

    x = np.asarray(points, np.float64)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    d = min(n_components, x.shape[1], x.shape[0] - 1)
    z = PCA(n_components=d, random_state=seed).fit_transform(x)
    rng = np.random.default_rng(seed)
    neg, ev = _negentropy(z, k)

    def null_of(n: int) -> float:
        return _negentropy(rng.standard_normal((n, d)) * np.sqrt(ev), k)[0]

    null = null_of(len(z))
    excess = []
    m = int(fraction * len(z))
    for _ in range(repeats):
        sub = z[rng.choice(len(z), m, replace=False)]
        excess.append(_negentropy(sub, k)[0] - null_of(m))
    return {"negentropy": neg, "null": null, "excess": neg - null, "n_points": int(len(z)), "dims": int(d),
            "excess_interval": [float(np.percentile(excess, 2.5)), float(np.percentile(excess, 97.5))]}
