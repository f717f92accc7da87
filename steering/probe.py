"""The judge's probe: a logistic regression fitted on texts no steering method reads.

A judge built from the steering texts scores its own method: the DiffMean direction *is* the
`diffmean` method's vector, so projecting steered text on it measures how far that method pushed
along itself. The probe here is fitted on the concept's separate judge texts (steering.concepts)
with the same recipe as sparse probing (evals.probing: inputs standardised, L2 logistic
regression, C = 1), and folded back into one readout on raw activations, `x . w + b` (the log-odds
that the text is about the concept), so it can be applied to every generated token. Its
leave-one-out accuracy on the judge texts says how much to trust it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from workbench.errors import WorkbenchError


@dataclass
class LinearProbe:
    """`readout(x) = x . w + b` on raw activations; what it was fitted on."""

    w: Tensor  # [d] float32
    b: float
    n_positive: int
    n_negative: int
    loo_accuracy: float = float("nan")
    texts: list[str] = field(default_factory=list)

    def readout(self, x: Tensor) -> Tensor:
        return x.float() @ self.w + self.b

    def describe(self) -> dict:
        return {"kind": "logistic regression (standardised inputs, L2, C=1)", "n_positive": self.n_positive,
                "n_negative": self.n_negative, "loo_accuracy": self.loo_accuracy, "texts": list(self.texts)}


def _pipeline():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))


def fit_probe(pos: Tensor, neg: Tensor, *, loo: bool = True, texts: list[str] | None = None) -> LinearProbe:
    """Fit on rows of `pos [n, d]` (label 1) and `neg [m, d]` (label 0); fold the scaler into `w, b`."""
    if pos.shape[0] == 0 or neg.shape[0] == 0:
        raise WorkbenchError(f"the probe needs texts of both kinds; got {pos.shape[0]} positive and "
                             f"{neg.shape[0]} negative")
    x = torch.cat([pos, neg]).double().numpy()
    y = np.array([1] * pos.shape[0] + [0] * neg.shape[0])
    clf = _pipeline().fit(x, y)
    scaler, lr = clf[0], clf[-1]
    w = lr.coef_[0] / scaler.scale_
    b = float(lr.intercept_[0] - (lr.coef_[0] * scaler.mean_ / scaler.scale_).sum())
    acc = float("nan")
    if loo and pos.shape[0] >= 2 and neg.shape[0] >= 2:
        hits = []
        for i in range(len(y)):
            keep = np.arange(len(y)) != i
            hits.append(int(_pipeline().fit(x[keep], y[keep]).predict(x[i: i + 1])[0] == y[i]))
        acc = float(np.mean(hits))
    return LinearProbe(torch.from_numpy(w).float(), b, pos.shape[0], neg.shape[0], acc, list(texts or []))
