"""Concept "crystals" after "The Geometry of Concepts" (Li, Michaud, Tegmark et al. 2024), Section 3.

Word pairs that stand in one relation (man:woman, king:queen) should differ by about the same
vector, so any two pairs form a parallelogram (equal, parallel sides) or a trapezoid (parallel,
unequal). The paper finds the structure weak in raw activations because of distractor directions
(word length and the like, which vary from pair to pair whatever the relation) and projects them
out with linear discriminant analysis fitted to the relation labels of the difference vectors.

Here every claim is measured out of sample: the silhouette of relations after a projection fitted
on other pairs (k-fold), against the same with shuffled labels; parallelism of difference vectors
against differences with shuffled partners.
"""

from __future__ import annotations

import itertools

import numpy as np

from workbench.errors import WorkbenchError


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def quadruple_shape(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> dict[str, float]:
    """Sides u = b - a and v = d - c: `cos` (parallel: 1), `length_ratio` |v| / |u| (parallelogram: 1,
    trapezoid: parallel but not 1), `residual` |u - v| / mean(|u|, |v|) (parallelogram: 0)."""
    u, v = np.asarray(b, float) - np.asarray(a, float), np.asarray(d, float) - np.asarray(c, float)
    nu, nv = float(np.linalg.norm(u)), float(np.linalg.norm(v))
    return {"cos": float(_unit(u) @ _unit(v)), "length_ratio": nv / max(nu, 1e-12),
            "residual": float(np.linalg.norm(u - v)) / max((nu + nv) / 2, 1e-12)}


def analogy_rank(vectors: dict[str, np.ndarray], a: str, b: str, c: str, d: str) -> int:
    """Rank (1 = first) of d among all words but a, b, c by cosine to b - a + c (a:b :: c:d)."""
    for w in (a, b, c, d):
        if w not in vectors:
            raise WorkbenchError(f"word {w!r} has no vector; words: {', '.join(sorted(vectors))}")
    target = _unit(np.asarray(vectors[b], float) - vectors[a] + vectors[c])
    cands = [w for w in vectors if w not in (a, b, c)]
    scores = np.array([_unit(np.asarray(vectors[w], float)) @ target for w in cands])
    return int(1 + np.sum(scores > scores[cands.index(d)]))


def pair_differences(vectors: dict[str, np.ndarray], relations: dict[str, list[tuple[str, str]]]
                     ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Difference vectors `second - first` of every pair, their relation labels and the relation names."""
    diffs, labels, names = [], [], list(relations)
    for r, name in enumerate(names):
        for a, b in relations[name]:
            diffs.append(np.asarray(vectors[b], float) - np.asarray(vectors[a], float))
            labels.append(r)
    return np.stack(diffs), np.array(labels), names


def _mean_pairwise_cos(diffs: np.ndarray) -> float:
    u = diffs / np.linalg.norm(diffs, axis=1, keepdims=True).clip(1e-12)
    c = u @ u.T
    iu = np.triu_indices(len(u), 1)
    return float(c[iu].mean())


def parallelogram_test(vectors: dict[str, np.ndarray], pairs: list[tuple[str, str]], permutations: int = 1000,
                       seed: int = 0) -> dict[str, float]:
    """Do the pairs of one relation differ by parallel vectors? `mean_cos` over all pairs of pairs,
    against the same with the second words given to random partners (`permutations` times; p the
    share of shuffles at least as parallel); `analogy_top1` the share of ordered quadruples a:b::c:d
    where d is the nearest word to b - a + c; the median `length_ratio` (max/min side) tells
    parallelograms (1) from trapezoids."""
    if len(pairs) < 3:
        raise WorkbenchError(f"a parallelogram test needs at least 3 pairs, got {len(pairs)}")
    firsts = np.stack([np.asarray(vectors[a], float) for a, _ in pairs])
    seconds = np.stack([np.asarray(vectors[b], float) for _, b in pairs])
    obs = _mean_pairwise_cos(seconds - firsts)
    rng = np.random.default_rng(seed)
    null = []
    n = len(pairs)
    for _ in range(permutations):
        p = rng.permutation(n)
        while n > 1 and np.all(p == np.arange(n)):
            p = rng.permutation(n)
        null.append(_mean_pairwise_cos(seconds[p] - firsts))
    null = np.array(null)
    tops, ratios = [], []
    for (a, b), (c, d) in itertools.permutations(pairs, 2):
        tops.append(analogy_rank(vectors, a, b, c, d) == 1)
        s = quadruple_shape(vectors[a], vectors[b], vectors[c], vectors[d])["length_ratio"]
        ratios.append(max(s, 1 / max(s, 1e-12)))
    return {"pairs": n, "mean_cos": obs, "null_mean_cos": float(null.mean()),
            "null_95": float(np.percentile(null, 95)), "p_value": float((1 + np.sum(null >= obs)) / (1 + permutations)),
            "analogy_top1": float(np.mean(tops)), "median_length_ratio": float(np.median(ratios))}


def _project(method: str, train: np.ndarray, labels: np.ndarray, n_components: int, shrinkage: bool = False):
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    if method == "raw":
        return lambda x: x
    if method == "pca":
        return PCA(n_components=min(n_components, *train.shape)).fit(train).transform
    if method == "lda":
        k = min(n_components, len(np.unique(labels)) - 1)
        lda = (LinearDiscriminantAnalysis(n_components=k, solver="eigen", shrinkage="auto") if shrinkage
               else LinearDiscriminantAnalysis(n_components=k))  # the paper's: sklearn's default SVD solver
        return lda.fit(train, labels).transform
    raise WorkbenchError(f"method={method!r}; valid choices: raw, pca, lda")


def _cv_silhouette(x: np.ndarray, labels: np.ndarray, method: str, n_components: int, folds: int, seed: int,
                   shrinkage: bool) -> float:
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import StratifiedKFold

    scores, weights = [], []
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, labels):
        if len(np.unique(labels[te])) < 2:
            continue
        proj = _project(method, x[tr], labels[tr], n_components, shrinkage)
        scores.append(silhouette_score(proj(x[te]), labels[te]))
        weights.append(len(te))
    return float(np.average(scores, weights=weights))


def heldout_silhouette(diffs: np.ndarray, labels: np.ndarray, method: str = "lda", n_components: int = 8,
                       folds: int = 5, seed: int = 0, shuffles: int = 0, shrinkage: bool = False) -> dict[str, object]:
    """Silhouette of the relation labels of held-out difference vectors after a projection fitted on
    the other folds (`raw`: none; `pca`; `lda`: LDA on the relation labels, at most relations - 1
    components; sklearn's SVD solver as the paper, or Ledoit-Wolf `shrinkage` when there are far
    fewer pairs than dimensions), averaged over stratified folds. With `shuffles`, the same with the
    labels permuted that many times: `null_mean`, `null_95` and `p_value`. `projected` is every
    vector under the projection fitted on all of them (to look at, or to test for a distractor)."""
    x = np.asarray(diffs, float)
    labels = np.asarray(labels)
    out: dict[str, object] = {"method": method,
                              "silhouette": _cv_silhouette(x, labels, method, n_components, folds, seed, shrinkage),
                              "projected": _project(method, x, labels, n_components, shrinkage)(x)}
    if shuffles:
        rng = np.random.default_rng(seed)
        null = np.array([_cv_silhouette(x, rng.permutation(labels), method, n_components, folds, seed, shrinkage)
                         for _ in range(shuffles)])
        out.update(null_mean=float(null.mean()), null_95=float(np.percentile(null, 95)),
                   p_value=float((1 + np.sum(null >= out["silhouette"])) / (1 + shuffles)))
    return out


def distractor_r2(points: np.ndarray, values: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """How much of a distractor (e.g. the difference in word length) the points still encode:
    cross-validated R^2 of a ridge regression (penalty chosen inside each fold) of the values on the points."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict

    x = np.asarray(points, float)
    y = np.asarray(values, float)
    pred = cross_val_predict(RidgeCV(alphas=np.logspace(-3, 4, 15)), x, y,
                             cv=KFold(folds, shuffle=True, random_state=seed))
    return float(1 - np.sum((y - pred) ** 2) / max(np.sum((y - y.mean()) ** 2), 1e-12))
