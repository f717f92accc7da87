"""The two probes of the absorption metric: a linear probe per letter on the model's activations
(the truth), and k-sparse probes on the SAE's features (which features carry the letter).

- Letter probes: one binary logistic regression per letter (scikit-learn, L2, C = 1; inputs
  standardised on train, the weights mapped back to the raw activation space so that cosines
  with decoder directions mean something). SAEBench trains the same 26 one-vs-rest probes with
  a BCE loss in torch; its score > 0 is our decision function > 0.
- k-sparse probes (SAEBench's `train_k_sparse_probes`): an L1-regularised logistic regression
  per letter on all features ranks them by their (positive) weight; for k = 1..max_k a logistic
  regression (class_weight balanced) on the top k is fitted and scored by F1 on the test words.
  The letter's main features are the top k for the last k whose F1 rose by more than
  `f1_jump` (0.03) over the best before it (k = 1 always counts): extra features that raise F1
  that much are a split of the letter, not an absorber.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LetterProbes:
    """Weights `[letters, d]` and biases in the raw activation space, and each letter's test F1."""

    letters: list[str]
    weight: np.ndarray
    bias: np.ndarray
    f1: dict[str, float]

    def scores(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight.T + self.bias


def _f1(y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, pred, zero_division=0.0))


def train_letter_probes(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                        letters: list[str]) -> LetterProbes:
    """One-vs-rest logistic probes; `y_*` hold letter indices into `letters`."""
    from sklearn.linear_model import LogisticRegression

    mu, sd = x_train.mean(0), x_train.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    z = (x_train - mu) / sd
    w = np.zeros((len(letters), x_train.shape[1]))
    b = np.zeros(len(letters))
    for i in range(len(letters)):
        y = (y_train == i).astype(np.int64)
        if y.min() == y.max():
            b[i] = 1.0 if y[0] else -1.0
            continue
        clf = LogisticRegression(C=1.0, solver="liblinear", max_iter=1000).fit(z, y)
        w[i] = clf.coef_[0] / sd
        b[i] = clf.intercept_[0] - float((clf.coef_[0] * mu / sd).sum())
    probes = LetterProbes(letters, w, b, {})
    s = probes.scores(x_test)
    probes.f1 = {c: _f1(y_test == i, s[:, i] > 0) for i, c in enumerate(letters)}
    return probes


@dataclass
class SparseProbing:
    """Per letter: F1 of the k-sparse probe for k = 1..max_k, its features, and the main features."""

    f1: dict[str, list[float]]
    features: dict[str, list[list[int]]]
    main: dict[str, list[int]]


def rank_features_l1(f_train: np.ndarray, y: np.ndarray, l1_c: float) -> np.ndarray:
    """Features ordered by the positive weight of an L1 logistic regression (ties: mean difference)."""
    from sklearn.linear_model import LogisticRegression

    if y.min() == y.max():
        return np.arange(f_train.shape[1])
    active = np.flatnonzero((f_train != 0).any(0))  # a feature silent on every word gets weight 0 anyway
    clf = LogisticRegression(l1_ratio=1.0, C=l1_c, solver="liblinear", max_iter=1000).fit(f_train[:, active], y)
    weight = np.zeros(f_train.shape[1])
    weight[active] = clf.coef_[0]
    diff = f_train[y == 1].mean(0) - f_train[y == 0].mean(0)
    return np.lexsort((-diff, -weight))


def k_sparse_probing(f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray, y_test: np.ndarray,
                     letters: list[str], *, max_k: int = 10, f1_jump: float = 0.03,
                     l1_c: float = 0.1) -> SparseProbing:
    """k-sparse probes on SAE features `[words, F]` (dense), letter by letter."""
    from sklearn.linear_model import LogisticRegression

    out = SparseProbing({}, {}, {})
    for i, c in enumerate(letters):
        ytr, yte = (y_train == i).astype(np.int64), (y_test == i).astype(np.int64)
        order = rank_features_l1(f_train, ytr, l1_c)
        f1s, feats, main, best, rising = [], [], [], -100.0, True
        for k in range(1, max_k + 1):
            sel = order[:k]
            if ytr.min() == ytr.max():
                pred = np.full(len(yte), bool(ytr[0]))
            else:
                clf = LogisticRegression(solver="liblinear", max_iter=500, class_weight="balanced").fit(f_train[:, sel], ytr)
                pred = clf.decision_function(f_test[:, sel]) > 0
            f1 = _f1(yte, pred)
            f1s.append(f1)
            feats.append([int(j) for j in sel])
            if rising and f1 > best + f1_jump:  # SAEBench stops at the first k that adds too little
                best, main = f1, [int(j) for j in sel]
            else:
                rising = False
        out.f1[c], out.features[c], out.main[c] = f1s, feats, main
    return out
