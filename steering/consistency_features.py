"""What consistency steering reads and shifts: question-span reads and their SAE codes, the
within-fact contrast of consistent against inconsistent pairs, the template filter, the per-layer
probe that picks the layer, and the firing-only shift (see `steering.consistency` for the method)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from steering.interventions import Intervention, code_edit_delta
from steering.positions import Positions
from steering.reading import _device, chunks, encode_texts
from workbench.errors import WorkbenchError
from workbench.hooks import HookSite, capture

# ---------------------------------------------------------------------------- contrast and selection


def consistency_contrast(codes: Tensor, fact: list, entity: list[str]) -> tuple[Tensor, Tensor, int]:
    """Within-fact contrast of consistent against inconsistent paraphrase pairs.

    `codes [N, F]` (one row per prompt), its fact and answer entity. For every fact holding both
    kinds of pairs: mean over its consistent pairs of the pair code (mean of the two prompts)
    minus the same over its inconsistent pairs. Returns the mean over those facts, its t statistic
    over facts (mean / standard error; 0 where the spread is 0), and how many facts contributed.
    """
    codes = codes.double()
    diffs = []
    for f in dict.fromkeys(fact):
        idx = [i for i, g in enumerate(fact) if g == f]
        cons, inc = [], []
        for i, j in itertools.combinations(idx, 2):
            (cons if entity[i] == entity[j] and entity[i] != "" else inc).append((codes[i] + codes[j]) / 2)
        if cons and inc:
            diffs.append(torch.stack(cons).mean(0) - torch.stack(inc).mean(0))
    if not diffs:
        raise WorkbenchError("no training fact has both consistent and inconsistent paraphrase pairs; the contrast "
                             "needs some (use more facts)")
    d = torch.stack(diffs)
    mean = d.mean(0)
    if d.shape[0] < 2:
        return mean, mean.sign(), 1
    se = d.std(0) / d.shape[0] ** 0.5
    t = torch.where(se > 0, mean / se.clamp_min(1e-30), torch.zeros_like(mean))
    return mean, t, d.shape[0]


def template_eta2(codes: Tensor, template: list[int]) -> Tensor:
    """Per feature, the share of its variance over prompts that the template explains (eta^2 of a one-way ANOVA)."""
    x = codes.double()
    total = (x - x.mean(0)).pow(2).sum(0)
    t = torch.as_tensor(template)
    between = torch.zeros_like(total)
    for k in t.unique():
        g = x[t == k]
        between += g.shape[0] * (g.mean(0) - x.mean(0)).pow(2)
    return torch.where(total > 0, between / total.clamp_min(1e-30), torch.zeros_like(total))


def eligible_features(codes: Tensor, template: list[int], max_eta2: float, min_firing: float) -> tuple[Tensor, Tensor]:
    """Features that fire on at least `min_firing` of the prompts and are not mostly template; and every eta^2."""
    eta = template_eta2(codes, template)
    fires = (codes > 0).double().mean(0)
    ok = (fires >= max(min_firing, 1e-12)) & (eta <= max_eta2)
    return ok, eta


def select_features(codes: Tensor, fact: list, template: list[int], entity: list[str], n: int, *,
                    max_eta2: float = 0.5, min_firing: float = 0.05) -> dict[str, Any]:
    """The `n` eligible features with the largest |t| of the consistency contrast, with their signs."""
    mean, t, n_facts = consistency_contrast(codes, fact, entity)
    ok, eta = eligible_features(codes, template, max_eta2, min_firing)
    if not bool(ok.any()):
        raise WorkbenchError("no feature is eligible (firing and not mostly template); lower --min-firing or raise "
                             "--max-template-eta2")
    score = torch.where(ok, t.abs(), torch.full_like(t, -1.0))
    top = score.topk(min(n, int(ok.sum()))).indices
    return {"features": [int(f) for f in top], "sign": [float(torch.sign(mean[f])) or 1.0 for f in top],
            "t": [float(t[f]) for f in top], "contrast": [float(mean[f]) for f in top],
            "template_eta2": [float(eta[f]) for f in top], "eligible": ok, "eta2": eta, "facts_contrasted": n_facts,
            "dropped_template": int(((eta > max_eta2) & ((codes > 0).double().mean(0) >= max(min_firing, 1e-12))).sum())}


# ---------------------------------------------------------------------------- the intervention


@dataclass
class FiringShift(Intervention):
    """Add `shifts[f]` to feature f where it fires (code > 0), never below zero; the error term is kept.

    LF-Steering's `activation + alpha` restricted to active features: a silent feature stays
    silent (the shift would otherwise write its direction into every token), and a negative shift
    stops at zero, where a ReLU-type code ends.
    """

    sae: Any
    shifts: dict[int, float]
    positions: Positions = field(default_factory=lambda: Positions("prompt"))
    hook: str = ""

    def __post_init__(self) -> None:
        self.hook = self.hook or self.sae.cfg.hook
        self._feats = torch.tensor(list(self.shifts), dtype=torch.long)
        self._vals = torch.tensor(list(self.shifts.values()), dtype=torch.float32)

    def new_codes(self, old: Tensor) -> Tensor:
        return torch.where(old > 0, (old + self._vals.to(old)).clamp_min(0), old)

    def delta(self, act: Tensor, site: HookSite) -> Tensor:
        return code_edit_delta(self.sae, self._feats, act, self.new_codes)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "shifts": {str(k): v for k, v in self.shifts.items()}}


# ---------------------------------------------------------------------------- reading


def span_reads(lm: Any, prompts: list[str], hooks: list[str], batch_size: int = 32) -> dict[str, list[Tensor]]:
    """Per hook, per prompt, the `[tokens, d]` activations of the question span (BOS left out)."""
    out: dict[str, list[Tensor]] = {h: [] for h in hooks}
    skip = len(lm.prefix_ids or [])
    for sl in chunks(len(prompts), batch_size):
        b = encode_texts(lm, prompts[sl])
        acts = capture(lm, b.tokens.to(_device(lm)), hooks, stop=True)
        mask = b.mask.clone()
        mask[:, :skip] = False
        for h in hooks:
            a = acts[h].float().cpu()
            out[h] += [a[i][mask[i]] for i in range(a.shape[0])]
    return out


def span_codes(sae: Any, reads: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per prompt, the mean SAE code over its question span `[N, F]`, and per feature its mean when firing."""
    means, tot, cnt = [], torch.zeros(sae.num_features, dtype=torch.float64), torch.zeros(sae.num_features,
                                                                                           dtype=torch.float64)
    with torch.no_grad():
        for r in reads:
            z = sae.encode(r.to(sae.W_dec.device, sae.W_dec.dtype)).to_dense().double().cpu()
            means.append(z.mean(0))
            tot += z.sum(0)
            cnt += (z > 0).sum(0)
    return torch.stack(means), (tot / cnt.clamp_min(1)).float()


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted half."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels) == 1
    p, n = s[y], s[~y]
    if len(p) == 0 or len(n) == 0:
        return float("nan")
    return float(((p[:, None] > n[None, :]).sum() + 0.5 * (p[:, None] == n[None, :]).sum()) / (len(p) * len(n)))


def layer_probe(reads: dict[str, list[Tensor]], fact: list, entity: list[str], folds: int = 5,
                ridge: float = 10.0) -> dict[str, float]:
    """Per hook, the held-out-fact ROC AUC of a linear probe predicting pair consistency from |h_i - h_j|.

    The probe is ridge regression on standardised features (closed form, so 30 layers cost
    seconds); folds hold out whole facts, so it cannot score by recognising the fact.
    """
    pairs, labels, groups = [], [], []
    facts = list(dict.fromkeys(fact))
    for f in facts:
        idx = [i for i, g in enumerate(fact) if g == f]
        for i, j in itertools.combinations(idx, 2):
            pairs.append((i, j))
            labels.append(int(entity[i] == entity[j] and entity[i] != ""))
            groups.append(facts.index(f))
    y = np.array(labels, dtype=np.float64)
    grp = np.array(groups)
    fold_of = grp % min(folds, len(facts))
    out: dict[str, float] = {}
    if len(set(labels)) < 2:
        return {h: float("nan") for h in reads}
    a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    for h, rs in reads.items():
        m = torch.stack([r.mean(0) for r in rs]).double().numpy()
        x = np.abs(m[a] - m[b])
        pred = np.zeros(len(y))
        for k in np.unique(fold_of):
            tr, te = fold_of != k, fold_of == k
            mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-8
            xt = (x[tr] - mu) / sd
            w = np.linalg.solve(xt.T @ xt + ridge * len(xt) * np.eye(x.shape[1]) / x.shape[1] + 1e-9 * np.eye(x.shape[1]),
                                xt.T @ (y[tr] - y[tr].mean()))
            pred[te] = ((x[te] - mu) / sd) @ w
        out[h] = auc(pred, y.astype(int))
    return out


def diffmean_vector(reads: list[Tensor], fact: list, entity: list[str]) -> Tensor:
    """DiffMean of consistency: the within-fact consistent-minus-inconsistent contrast of the raw span means."""
    m = torch.stack([r.mean(0) for r in reads])
    mean, _, _ = consistency_contrast(m, fact, entity)
    return mean.float()
