"""Choosing a steering coefficient: on the selection prompts, under filters and a cost budget; reported
on the other prompts (no peeking, as AxBench does).

The rule is one object, `SelectionRule`, and one function, `choose_coeff`, so that a sweep over
other things (feature selectors, layers) chooses the same way. Among the coefficients tried, a
coefficient is admitted when, on the selection half and next to the unsteered text there:
- its KL on neutral text is within the budget `max_kl` (nats/token; None: no budget);
- its perplexity under the unsteered model is at most `max_ppl_ratio` times the unsteered one's;
- it does not repeat itself: distinct-2 at least `min_distinct_ratio` times the unsteered one's and
  a zlib compression ratio at most `max_compression_ratio` times it (perplexity alone lets a loop
  through: "the sea the sea the sea" is easy to predict);
- none of these is NaN (nothing generated, nothing measured).
Of the admitted ones the best `score` wins (the first in grid order on a tie); if none is
admitted, coefficient 0 (no steering).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from steering.measures import mean_scores

# Per-row measures averaged over prompts (the KL is one number per setting).
MEASURES = ("sae_feature", "probe", "target_logprob", "target_hit", "ppl", "distinct_2", "distinct_3", "compression")


@dataclass(frozen=True)
class SelectionRule:
    """How a coefficient is chosen; every bound is relative to the unsteered text except the KL budget."""

    score: str = "target_logprob"
    max_kl: float | None = None
    max_ppl_ratio: float | None = 4.0
    min_distinct_ratio: float | None = 0.75
    max_compression_ratio: float | None = 1.5

    def rejects(self, cand: Mapping[str, float], base: Mapping[str, float]) -> str | None:
        """Why `cand` (means on the selection half, with its `kl`) is not admitted; None if it is."""
        def bad(x: Any) -> bool:
            return x is None or (isinstance(x, float) and math.isnan(x))

        if bad(cand.get(self.score)):
            return f"{self.score} is NaN"
        if self.max_kl is not None:
            if bad(cand.get("kl")):
                return "KL is NaN (no neutral token steered)"
            if cand["kl"] > self.max_kl:
                return f"KL {cand['kl']:.3g} over the budget {self.max_kl:g}"
        checks = (("ppl", self.max_ppl_ratio, 1), ("distinct_2", self.min_distinct_ratio, -1),
                  ("compression", self.max_compression_ratio, 1))
        for key, ratio, sign in checks:
            if ratio is None:
                continue
            if bad(cand.get(key)) or bad(base.get(key)):
                return f"{key} is NaN"
            if sign * cand[key] > sign * ratio * base[key]:
                word = "over" if sign > 0 else "under"
                return f"{key} {cand[key]:.3g} {word} {ratio:g}x the unsteered {base[key]:.3g}"
        return None


def choose_coeff(candidates: Mapping[float, Mapping[str, float]], base: Mapping[str, float],
                 rule: SelectionRule) -> float:
    """The admitted coefficient with the best score (selection-half means per coefficient); 0 if none."""
    best, best_score = 0.0, -math.inf
    for c, cand in candidates.items():
        if rule.rejects(cand, base) is None and cand[rule.score] > best_score:
            best, best_score = c, cand[rule.score]
    return best


def split_means(rows: Sequence[Mapping[str, Any]], split: str | None) -> dict[str, float]:
    """Mean of each measure over the rows of one split (None: all), NaN ignored; `kl` of the setting."""
    keep = [r for r in rows if split is None or r["split"] == split]
    m = mean_scores([{k: float(r.get(k, math.nan)) for k in MEASURES} for r in keep]) if keep else \
        {k: math.nan for k in MEASURES}
    m["kl"] = float(keep[0]["kl"]) if keep else math.nan
    m["n_prompts"] = len(keep)
    return m


def select(rows: Sequence[Mapping[str, Any]], concept: str, methods: Sequence[str],
           rule: SelectionRule) -> dict[str, Any]:
    """Per method: the coefficient chosen on the select half, the report half's means there, and why the
    other coefficients were not admitted. `none` is the unsteered text on the report half."""
    mine = [r for r in rows if r["concept"] == concept]
    none = [r for r in mine if r["method"] == "none"]
    base = split_means(none, "select")
    out: dict[str, Any] = {"none": {"coeff": 0.0, **split_means(none, "report")}}
    for method in methods:
        by_coeff: dict[float, list] = {}
        for r in mine:
            if r["method"] == method:
                by_coeff.setdefault(float(r["coeff"]), []).append(r)
        cands = {c: split_means(rs, "select") for c, rs in by_coeff.items()}
        best = choose_coeff(cands, base, rule)
        rejected = {str(c): why for c, cand in cands.items() if (why := rule.rejects(cand, base)) is not None}
        report = split_means(by_coeff[best], "report") if best in by_coeff else {**out["none"]}
        out[method] = {**report, "coeff": best, "rejected": rejected}
    return out
