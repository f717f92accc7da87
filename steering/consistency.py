"""Consistency steering (LF-Steering, arXiv 2501.11036): make paraphrases of a question agree.

Facts the offline model knows (country -> capital), each asked in eight paraphrases (TEMPLATES). The method, as the paper describes it:

0. Facts. Of the candidates (CANDIDATES), those the model knows: its answer under the first
   template names the capital. They are split (seeded) into training and held-out facts.
1. Labels. Each answer is scored on its answer *entity* (the first known capital named in the
   continuation, else its first capitalised phrase), not its first word. A paraphrase pair of one
   fact is *consistent* when both answers name the same entity: the label is agreement within a
   fact, not correctness.
2. Layer. A per-layer probe (logistic regression on |h_i - h_j| of the pair's read activations,
   cross-validated with whole facts held out) predicts the pair label; the layer it separates
   best among those with an SAE is steered (every probed layer's score is reported).
3. Reading. Activations are read where all paraphrases share meaning: the mean over the question
   span (every prompt token but BOS), of the SAE codes of each token.
4. Contrast. Within each fact with both kinds of pairs, mean code over consistent pairs minus
   mean code over inconsistent pairs (a pair's code: the mean of its two prompts'); averaged over
   facts, and ranked by its t statistic over facts. Features that mostly encode the template
   (template eta^2 above `max_template_eta2` over all training prompts) and features that rarely
   fire are dropped before ranking.
5. Steering. The chosen features get a bias alpha (in units of each feature's mean activation
   when firing), signed by the contrast, on the question span, only where they fire; a code is
   never pushed below zero. alpha is chosen on the training facts.

Reported on held-out facts, with percentile-bootstrap intervals over facts: consistency (mean over
facts of the share of agreeing pairs) and accuracy before and after; beside it every time, the
same shifts given to random eligible feature sets (the null), and a DiffMean-of-consistency vector
(the same within-fact contrast of the raw activations), its coefficient chosen on the same
training facts; and locality (KL on neutral text with the shift at every token, share of
unrelated prompts whose greedy continuation changes).

One deviation, said plainly: the paper trains a TopK SAE at the probe's layer; here the layer is
chosen among the SAEs given (`--sae` takes several), and the report says which layer the probe
prefers overall.

This module holds the run; the facts and answer scoring live in `steering.consistency_facts`, the
reads, contrast, probe and shift in `steering.consistency_features` (their names are re-exported here).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steering.concepts import STEER_PROMPTS, neutral_texts
from steering.generation import generate
from steering.consistency_facts import (  # noqa: F401  (re-exported: the module's public names)
    CANDIDATES,
    EXTRA_ENTITIES,
    TEMPLATES,
    answer_entity,
    answers,
    fact_consistency,
    known_entities,
    known_facts,
    per_fact,
)
from steering.consistency_features import (  # noqa: F401  (re-exported)
    FiringShift,
    consistency_contrast,
    diffmean_vector,
    eligible_features,
    layer_probe,
    select_features,
    span_codes,
    span_reads,
    template_eta2,
)
from steering.interventions import add_direction
from steering.measures import NeutralKL
from steering.positions import Positions
from workbench.config import save_config
from workbench.errors import WorkbenchError
from workbench.io import atomic_save_figure, atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)


@dataclass
class ConsistencyConfig:
    sae: tuple[str, ...] = field(metadata={"help": "SAE directory, or several at different layers: the per-layer "
                                           "consistency probe picks the one steered"})
    out: str = field(default="cache/steer/consistency", metadata={"help": "output directory"})
    model: str = field(default="", metadata={"help": "model (default: the one the SAE was trained on)"})
    features: int = field(default=16, metadata={"help": "number of features shifted"})
    alphas: tuple[float, ...] = field(default=(0.5, 1.0, 2.0, 4.0), metadata={
        "help": "shift strengths tried, in units of each feature's mean activation when firing"})
    train_facts: int = field(default=0, metadata={
        "help": "facts used to find features and pick alpha (0 = half); the rest are held out"})
    max_template_eta2: float = field(default=0.5, metadata={
        "help": "drop features whose activation the template explains more than this share of (eta^2)"})
    min_firing: float = field(default=0.05, metadata={
        "help": "eligible features fire on at least this share of the training prompts' question spans"})
    diffmean_coeffs: tuple[float, ...] = field(default=(1.0, 2.0, 4.0, 8.0), metadata={
        "help": "coefficients tried for the DiffMean-of-consistency vector (multiples of the contrast itself)"})
    null_draws: int = field(default=10, metadata={"help": "random feature sets given the same shifts (the null)"})
    probe_every: int = field(default=2, metadata={"help": "probe every Nth layer for consistency (plus the SAEs' layers)"})
    max_new_tokens: int = field(default=6, metadata={"help": "answer tokens generated"})
    neutral: int = field(default=8, metadata={"help": "neutral texts for the locality KL"})
    seed: int = field(default=0, metadata={"help": "seed of the train/held-out split of the facts and of the null"})
    device: str = field(default="cpu", metadata={"help": "device"})

    def __post_init__(self) -> None:
        self.sae = (self.sae,) if isinstance(self.sae, str) else tuple(self.sae)
        self.alphas = tuple(float(a) for a in self.alphas)
        self.diffmean_coeffs = tuple(float(a) for a in self.diffmean_coeffs)
        if not self.sae:
            raise WorkbenchError("give at least one --sae directory")
        if self.train_facts < 0:
            raise WorkbenchError(f"train_facts must be 0 (half of the known facts) or more; got {self.train_facts}")
        if self.features < 1 or not self.alphas or any(a <= 0 for a in self.alphas + self.diffmean_coeffs) \
                or not self.diffmean_coeffs:
            raise WorkbenchError("give features >= 1 and at least one alpha and DiffMean coefficient, all > 0")
        if not 0 < self.max_template_eta2 <= 1 or not 0 <= self.min_firing < 1:
            raise WorkbenchError(f"max_template_eta2 must be in (0, 1] and min_firing in [0, 1); got "
                                 f"{self.max_template_eta2}, {self.min_firing}")
        if self.null_draws < 0 or self.probe_every < 1 or self.max_new_tokens < 1:
            raise WorkbenchError("null_draws must be >= 0, probe_every >= 1 and max_new_tokens >= 1")


# ---------------------------------------------------------------------------- the run


def _interval(x: np.ndarray) -> dict[str, Any]:
    from evals.intervals import bootstrap_interval

    return bootstrap_interval(np.asarray(x, dtype=np.float64)).to_dict()


def _hook_layer(hook: str) -> int:
    m = re.search(r"blocks\.(\d+)\.", hook)
    return int(m.group(1)) if m else -1


def run_consistency(cfg: ConsistencyConfig, lm: Any = None, saes: Any = None) -> dict[str, Any]:
    from steering.setup import check_fit, load_for_steering, load_model_for

    if lm is None or saes is None:
        from saes import load_sae

        lm, first = load_for_steering(cfg.model, cfg.sae[0], cfg.device)
        saes = [first] + [load_sae(d, device=cfg.device) for d in cfg.sae[1:]]
    saes = list(saes) if isinstance(saes, (list, tuple)) else [saes]
    for s in saes:
        check_fit(lm, s)
    del load_model_for
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.json")
    # 0. facts: the candidates the model knows, split into training and held-out facts
    base_all = answers(lm, CANDIDATES, [], cfg.max_new_tokens)
    facts = known_facts(base_all)
    n_train = cfg.train_facts or len(facts) // 2
    if len(facts) < 4 or not 2 <= n_train <= len(facts) - 2:
        raise WorkbenchError(f"the model knows {len(facts)} of {len(CANDIDATES)} facts; train_facts {cfg.train_facts} "
                             "must leave at least 2 for training and 2 held out")
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(facts))
    train = [facts[i] for i in sorted(order[:n_train])]
    test = [facts[i] for i in sorted(order[n_train:])]
    train_names, test_names = {c for c, _ in train}, {c for c, _ in test}

    # 1. labels: the model's own answers on the training facts
    base_train = [r for r in base_all if r["fact"] in train_names]
    prompts = [r["prompt"] for r in base_train]
    fact = [r["fact"] for r in base_train]
    template = [r["template"] for r in base_train]
    entity = [r["entity"] for r in base_train]

    # 2. layer: a probe of consistency at every `probe_every`-th block and at each SAE's hook
    sae_hooks = [s.cfg.hook for s in saes]
    n_layers = int(getattr(lm, "n_layers", 0) or 0)
    probe_hooks = list(dict.fromkeys([f"blocks.{i}.hook_resid_post" for i in range(0, n_layers, cfg.probe_every)]
                                     + sae_hooks))
    probe_hooks = [h for h in probe_hooks if _valid_hook(lm, h)]
    reads = span_reads(lm, prompts, probe_hooks)
    probe = layer_probe(reads, fact, entity)
    sae = max(saes, key=lambda s: probe.get(s.cfg.hook, float("-inf")))
    hook = sae.cfg.hook
    best_any = max(probe, key=lambda h: probe[h]) if probe else hook

    # 3-4. contrast at the chosen SAE, on the question-span codes
    codes, mean_active = span_codes(sae, reads[hook])
    sel = select_features(codes, fact, template, entity, cfg.features, max_eta2=cfg.max_template_eta2,
                          min_firing=cfg.min_firing)
    feats, signs = sel["features"], sel["sign"]

    def shift_of(fs: list[int], sg: list[float], alpha: float) -> FiringShift:
        return FiringShift(sae, {f: alpha * s * float(mean_active[f]) for f, s in zip(fs, sg)})

    raw: list[dict[str, Any]] = [{**r, "split": "train", "method": "none", "alpha": 0.0} for r in base_train]

    def choose(make, grid, name):  # the coefficient with the best training consistency (ties: the smaller)
        best_a, best_c = 0.0, float(per_fact(base_train)["consistency"].mean())
        for a in grid:
            rows = answers(lm, train, [make(a)], cfg.max_new_tokens)
            raw.extend({**r, "split": "train", "method": name, "alpha": a} for r in rows)
            c = float(per_fact(rows)["consistency"].mean())
            log.info("%s %g: training consistency %.3f", name, a, c)
            if c > best_c:
                best_a, best_c = a, c
        return best_a, best_c

    alpha, train_best = choose(lambda a: shift_of(feats, signs, a), cfg.alphas, "sae")
    v = diffmean_vector(reads[hook], fact, entity)
    dm_coeffs = cfg.diffmean_coeffs
    dm_coeff, dm_train = choose(lambda c: add_direction(hook, v, c, positions=Positions("prompt")), dm_coeffs, "diffmean")

    # 5. held-out facts: before, SAE shift, DiffMean, and the random-feature null
    def held(ivs, name, a):
        rows = answers(lm, test, ivs, cfg.max_new_tokens)
        raw.extend({**r, "split": "test", "method": name, "alpha": a} for r in rows)
        return per_fact(rows)

    base_test = [r for r in base_all if r["fact"] in test_names]
    raw.extend({**r, "split": "test", "method": "none", "alpha": 0.0} for r in base_test)
    before = per_fact(base_test)
    use_alpha = alpha if alpha > 0 else cfg.alphas[0]  # alpha 0 would make "after" a copy of "before"
    sae_iv = shift_of(feats, signs, use_alpha)
    after = held([sae_iv], "sae", use_alpha)
    dm_use = dm_coeff if dm_coeff > 0 else dm_coeffs[0]
    dm_after = held([add_direction(hook, v, dm_use, positions=Positions("prompt"))], "diffmean", dm_use)
    pool = torch.nonzero(sel["eligible"]).flatten().tolist()
    null_means, null_deltas = [], []
    for k in range(cfg.null_draws):
        fs = [int(f) for f in rng.choice(pool, size=min(len(feats), len(pool)), replace=False)]
        res = held([shift_of(fs, signs[: len(fs)], use_alpha)], f"null{k}", use_alpha)
        null_means.append(float(res["consistency"].mean()))
        null_deltas.append(res["consistency"] - before["consistency"])

    u0 = generate(lm, STEER_PROMPTS, [], max_new_tokens=12).new_ids
    u1 = generate(lm, STEER_PROMPTS, [sae_iv], max_new_tokens=12).new_ids
    everywhere = FiringShift(sae, sae_iv.shifts, positions=Positions("all"))
    d_sae = after["consistency"] - before["consistency"]
    summary = {
        "hook": hook, "alpha": use_alpha, "alpha_chosen": alpha,
        "facts": {"candidates": len(CANDIDATES), "known": len(facts), "train": len(train), "held_out": len(test),
                  "contrasted": sel["facts_contrasted"], "paraphrases": len(TEMPLATES),
                  "held_out_names": sorted(test_names)},
        "probe_auc": probe, "probe_best_hook": best_any,
        "features": {"ids": feats, "sign": signs, "t": sel["t"], "template_eta2": sel["template_eta2"],
                     "eligible": len(pool), "dropped_template": sel["dropped_template"]},
        "train": {"before": float(per_fact(base_train)["consistency"].mean()), "sae_best": train_best,
                  "diffmean_best": dm_train, "diffmean_coeff": dm_use},
        "held_out": {
            "before": {"consistency": _interval(before["consistency"]), "accuracy": _interval(before["accuracy"])},
            "sae": {"consistency": _interval(after["consistency"]), "accuracy": _interval(after["accuracy"]),
                    "delta": _interval(d_sae)},
            "diffmean": {"consistency": _interval(dm_after["consistency"]),
                         "accuracy": _interval(dm_after["accuracy"]),
                         "delta": _interval(dm_after["consistency"] - before["consistency"])},
            "null": {"draws": len(null_means), "consistency_means": null_means,
                     "mean": float(np.mean(null_means)) if null_means else float("nan"),
                     "sd": float(np.std(null_means, ddof=1)) if len(null_means) > 1 else float("nan"),
                     "share_at_least_sae": (float(np.mean([m >= float(after["consistency"].mean())
                                                           for m in null_means])) if null_means else float("nan")),
                     "sae_minus_null": (_interval(d_sae - np.mean(null_deltas, 0)) if null_deltas else None)},
        },
        "locality": {"unrelated_changed": sum(a != b for a, b in zip(u0, u1)) / len(STEER_PROMPTS),
                     "kl_neutral_every_token": NeutralKL(lm, neutral_texts(cfg.neutral))([everywhere])},
    }
    atomic_write_bytes(out / "rows.jsonl", "".join(json.dumps(r) + "\n" for r in raw).encode())
    atomic_write_json(out / "summary.json", summary)
    _plot(summary, out / "plot.png")
    return summary


def _valid_hook(lm: Any, hook: str) -> bool:
    try:
        lm.check_hooks([hook])
        return True
    except Exception:
        return False


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = summary["held_out"]
    names = [("before", "before"), ("sae", f"SAE shift (alpha {summary['alpha']:g})"), ("diffmean", "DiffMean")]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for i, (k, label) in enumerate(names):
        c = h[k]["consistency"]
        ax.bar(i, c["estimate"], 0.6, yerr=[[c["estimate"] - c["low"]], [c["high"] - c["estimate"]]], label=label)
    if h["null"]["draws"]:
        ax.axhline(h["null"]["mean"], color="k", ls="--", lw=1, label="random-feature null")
    ax.set_xticks(range(len(names)), [n for n, _ in names])
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out consistency")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)


def _iv(d: dict[str, Any]) -> str:
    return f"{d['estimate']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"


def format_summary(s: dict[str, Any]) -> str:
    h, loc, f = s["held_out"], s["locality"], s["facts"]
    null = h["null"]
    return "\n".join([
        f"consistency steering at {s['hook']} (probe's best layer: {s['probe_best_hook']}): {len(s['features']['ids'])} "
        f"features, alpha {s['alpha']:g}; the model knows {f['known']} of {f['candidates']} facts: {f['train']} for "
        f"training ({f['contrasted']} contrasted), {f['held_out']} held out, {f['paraphrases']} paraphrases each; "
        f"95% bootstrap intervals over facts",
        f"held-out consistency {_iv(h['before']['consistency'])} -> SAE {_iv(h['sae']['consistency'])} "
        f"(change {_iv(h['sae']['delta'])}); DiffMean {_iv(h['diffmean']['consistency'])} "
        f"(change {_iv(h['diffmean']['delta'])})",
        f"random-feature null ({null['draws']} draws): {null['mean']:.3f} +- {null['sd']:.3f}; share of draws at or "
        f"above the SAE shift {null['share_at_least_sae']:.2f}",
        f"accuracy {_iv(h['before']['accuracy'])} -> {_iv(h['sae']['accuracy'])}",
        f"locality: {loc['unrelated_changed']:.0%} of unrelated prompts changed; KL on neutral text (shift at every "
        f"token) {loc['kl_neutral_every_token']:.4f}",
    ])
