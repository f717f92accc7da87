"""The feature selectors, by name: what a sweep iterates and `--select` chooses from.

Each selector takes a `SelectionContext` (model, SAE, concept and its activations, target tokens,
prompts) and returns a `Selection`: the direction to steer with (a decoder row, or for `sae_ts` a
solved vector), the feature it is (None for a vector), its score and the runners-up.

- rise: the feature whose mean activation rises most from negatives to positives (what the sweep's
  `sae` method always used: what a feature *reads*).
- output: the candidate with the highest output score (Arad et al.; what a feature *writes*, by its
  own logit-lens tokens, not the concept's).
- concept_output: the candidate whose edit at the neutral prompt puts the most next-token
  probability on the concept's target tokens.
- gradient: the feature with the largest d log p(target) / d coeff at 0 on the selection prompts
  (every feature: one backward pass).
- sae_ts: SAE-TS over the candidates' decoder rows, targeting the concept's feature rises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from workbench.errors import choices_error

SELECTORS: dict[str, Callable[["SelectionContext"], "Selection"]] = {}


def selector_names() -> tuple[str, ...]:
    return tuple(SELECTORS)


def register(name: str):
    def deco(fn):
        SELECTORS[name] = fn
        return fn

    return deco


@dataclass
class SelectionContext:
    lm: Any
    sae: Any
    pos: Tensor  # [n, d] the concept's positive texts at the hook
    neg: Tensor  # [n, d] its negative texts
    targets: list[int]  # target token ids (Judge.target_ids)
    prompts: list[str]  # prompts the gradient score is taken on (the sweep's selection half)
    positions: Any = None  # steering.Positions the gradient is taken at (default all)
    n_candidates: int = 32  # per source (rise, logit lens)
    mean_norm: float = 1.0  # the hook's mean norm: SAE-TS measures effects at 0.5 x this
    _pool: Tensor | None = field(default=None, repr=False)

    def pool(self) -> Tensor:
        from steering.selection.candidates import candidate_pool

        if self._pool is None:
            self._pool = candidate_pool(self.lm, self.sae, self.pos, self.neg, self.targets, self.n_candidates)
        return self._pool


@dataclass
class Selection:
    method: str
    feature: int | None
    vector: Tensor  # [d], float32 on CPU
    score: float
    runners_up: list[dict] = field(default_factory=list)  # [{"feature", "score"}], best first
    info: dict = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"select": self.method, "feature": self.feature, "score": self.score, "runners_up": self.runners_up,
                **self.info}


def select_direction(name: str, ctx: SelectionContext) -> Selection:
    """Run one selector by name (a bad name: one line listing the valid ones)."""
    if name not in SELECTORS:
        raise choices_error("feature selector", name, selector_names())
    return SELECTORS[name](ctx)


def _row(ctx: SelectionContext, f: int) -> Tensor:
    return ctx.sae.W_dec[f].detach().float().cpu()


def _best(name: str, ctx: SelectionContext, feats: Tensor, scores: Tensor, info: dict | None = None) -> Selection:
    order = scores.argsort(descending=True)
    top = [{"feature": int(feats[i]), "score": float(scores[i])} for i in order[:5]]
    f = top[0]["feature"]
    return Selection(name, f, _row(ctx, f), top[0]["score"], top[1:], info or {})


@register("rise")
def _rise(ctx: SelectionContext) -> Selection:
    from steering.vectors import feature_contrast

    diff = feature_contrast(ctx.sae, ctx.pos, ctx.neg)
    # concept_feature's argmax (the first on a tie), so the pick is exactly what it always was
    f = int(diff.argmax())
    sel = _best("rise", ctx, torch.arange(diff.numel()), diff)
    if sel.feature != f:
        sel = Selection("rise", f, _row(ctx, f), float(diff[f]), sel.runners_up)
    return sel


@register("output")
def _output(ctx: SelectionContext) -> Selection:
    from steering.selection.output import output_scores

    got = output_scores(ctx.lm, ctx.sae, ctx.pool())
    return _best("output", ctx, got.features, got.output, {"coeff": got.coeff, "pool": len(got.features)})


@register("concept_output")
def _concept_output(ctx: SelectionContext) -> Selection:
    from steering.selection.output import output_scores

    got = output_scores(ctx.lm, ctx.sae, ctx.pool(), targets=ctx.targets)
    return _best("concept_output", ctx, got.features, got.target_prob,
                 {"coeff": got.coeff, "pool": len(got.features), "base_target_prob": got.base_target_prob})


@register("gradient")
def _gradient(ctx: SelectionContext) -> Selection:
    from steering.selection.gradient import gradient_scores

    s = gradient_scores(ctx.lm, ctx.sae, ctx.prompts, ctx.targets, ctx.positions)
    return _best("gradient", ctx, torch.arange(s.numel()), s, {"prompts": len(ctx.prompts)})


@register("sae_ts")
def _sae_ts(ctx: SelectionContext) -> Selection:
    from steering.selection.sae_ts import fit_effect_map, measure_effects, targeted_vector
    from steering.vectors import feature_contrast

    pool = ctx.pool()
    vecs = ctx.sae.W_dec[pool].detach().float().cpu()
    coeff = 0.5 * ctx.mean_norm
    effects = measure_effects(ctx.lm, ctx.sae, vecs, ctx.prompts, coeff)
    w, b = fit_effect_map(vecs, effects / coeff)
    target = feature_contrast(ctx.sae, ctx.pos, ctx.neg).clamp_min(0)
    v = targeted_vector(w, b, target)
    # how much of the wanted effect the fitted map says v* delivers, per unit of coefficient
    score = float(torch.nn.functional.cosine_similarity(v @ w, target, dim=0))
    return Selection("sae_ts", None, v, score, [], {"pool": len(pool), "form": "paper", "effect": "sae",
                                                    "measured_at": coeff})
