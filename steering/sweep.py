"""Coefficient sweep per method, with the coefficient chosen on half the prompts and reported on the other.

For each concept, every method gives one direction at the SAE's hook: `sae` (the decoder row of
the feature each `select` selector picks, steering.selection: `sae` for `rise`, the concept's most
contrastive feature, and `sae_<selector>` for the others, e.g. `sae_output`), `diffmean`, `pca` (of paired differences) and `diffmean_sae` (DiffMean
through the SAE's features). All are added as `coeff * mean_norm * unit(direction)` so one grid of
coefficients means the same push for every method. Each (method, coeff) generates from every
prompt and is judged by the unsteered model (steering.measures); the KL on neutral text is its
cost. Two readouts of concept presence, and what they favour:
- `probe`: a logistic regression fitted on the concept's judge texts, which no method reads
  (steering.probe), so it scores every method from outside;
- `sae_feature`: the `sae` method's own feature re-read on the text. It measures how far that
  method pushed along itself, so it favours `sae`; it is kept as a readout, not as a judge.
Selection, with no peeking (steering.choice): on the even-numbered prompts, the coefficient with
the best `select_by` score among those within the KL budget whose perplexity and repetition stay
near the unsteered model's; the table reports the odd-numbered prompts at that coefficient.

Everything lands in `out`: config.json (resolved; `sae steer-sweep --config out/config.json`
reruns it), rows.jsonl (one line per prompt and setting, with the text), summary.json (with the
neutral texts, the judge's texts and accuracy, and why coefficients were not admitted), table.md,
plot.png.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from steering.choice import SelectionRule, select
from steering.concepts import STEER_PROMPTS, Concept, load_concept, neutral_texts
from steering.generation import generate
from steering.interventions import AddVector
from steering.measures import Judge, NeutralKL, mean_scores, score_generation
from steering.positions import Positions
from steering.probe import fit_probe
from steering.reading import hook_activations
from steering.selection.registry import SelectionContext, select_direction, selector_names
from steering.stats import measure_stats
from steering.vectors import concept_feature, diffmean, diffmean_sae, pca_diff, read_concept
from workbench.config import save_config
from workbench.errors import WorkbenchError, choices_error
from workbench.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)
METHODS = ("sae", "diffmean", "pca", "diffmean_sae")
SCORES = ("target_logprob", "probe", "sae_feature", "target_hit")


@dataclass
class SweepConfig:
    sae: str = field(metadata={"help": "SAE directory (its hook point is where every method steers)"})
    out: str = field(default="cache/steer/sweep", metadata={"help": "output directory"})
    model: str = field(default="", metadata={"help": "model (default: the one the SAE was trained on)"})
    concepts: tuple[str, ...] = field(default=("ocean",), metadata={"help": "built-in concept names or .json files"})
    methods: tuple[str, ...] = field(default=METHODS, metadata={"help": f"steering methods, of {', '.join(METHODS)}"})
    coeffs: tuple[float, ...] = field(default=(0.0, 0.25, 0.5, 1.0, 2.0),
                                      metadata={"help": "coefficients, in units of the hook's mean norm"})
    positions: str = field(default="all", metadata={"help": "all, prompt, generated, or a token range A:B"})
    prompts: int = field(default=12, metadata={"help": "number of built-in steering prompts (even: select, odd: report)"})
    max_new_tokens: int = field(default=20, metadata={"help": "tokens generated per prompt"})
    sample: bool = field(default=False, metadata={"help": "sample (seeded) instead of greedy decoding"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    read: Literal["mean", "last"] = field(default="mean", metadata={"help": "concept prompts read at the mean or last token"})
    select_by: Literal["target_logprob", "probe", "sae_feature", "target_hit"] = field(
        default="target_logprob", metadata={"help": "concept score that picks the coefficient (sae_feature favours "
                                                    "the sae method: it is that method's own feature)"})
    max_kl: float | None = field(default=None, metadata={"help": "KL budget: coefficients whose KL on neutral text "
                                                                 "(nats/token) exceeds it are not chosen (default: none)"})
    max_ppl_ratio: float = field(default=4.0, metadata={"help": "coefficients whose perplexity exceeds this times "
                                                                "the unsteered one are not chosen"})
    min_distinct_ratio: float = field(default=0.75, metadata={"help": "coefficients whose distinct-2 falls below this "
                                                                      "times the unsteered one are not chosen"})
    max_compression_ratio: float = field(default=1.5, metadata={"help": "coefficients whose zlib compression ratio "
                                                                        "exceeds this times the unsteered one are "
                                                                        "not chosen"})
    neutral: int = field(default=8, metadata={"help": "neutral texts for the KL cost and activation statistics"})
    sae_top: int = field(default=0, metadata={"help": "diffmean_sae keeps this many features (0: all)"})
    select: tuple[str, ...] = field(default=("rise",), metadata={
        "help": "how the sae method picks its feature; several give one sae method each (rise: activation rise, "
                "the sae method; others are named sae_<selector>)", "choices": selector_names, "what": "selector"})
    candidates: int = field(default=32, metadata={"help": "candidate features per source (activation rise, logit "
                                                          "lens) that output, concept_output and sae_ts score"})
    device: str = field(default="cpu", metadata={"help": "device"})

    def __post_init__(self) -> None:
        for m in self.methods:
            if m not in METHODS:
                raise choices_error("steering method", m, METHODS)
        for sel in self.select:
            if sel not in selector_names():
                raise choices_error("feature selector", sel, selector_names())
        if "sae" in self.methods and not self.select:
            raise WorkbenchError("the sae method needs at least one selector (--select)")
        if not self.concepts:
            raise WorkbenchError("give at least one concept")
        if not self.coeffs:
            raise WorkbenchError("give at least one coefficient")
        if not 2 <= self.prompts <= len(STEER_PROMPTS):
            raise WorkbenchError(f"prompts must be 2..{len(STEER_PROMPTS)} (half select, half report); got {self.prompts}")
        Positions.parse(self.positions)

    def rule(self) -> SelectionRule:
        return SelectionRule(self.select_by, self.max_kl, self.max_ppl_ratio, self.min_distinct_ratio,
                             self.max_compression_ratio)


def concept_directions(lm: Any, sae: Any, concept: Concept, cfg: SweepConfig,
                       mean_norm: float = 1.0) -> tuple[dict[str, torch.Tensor], Judge, dict]:
    """Each method's direction for one concept, the judge reading its presence, and what was found
    (`mean_norm`: the hook's mean norm, the scale SAE-TS measures effects at)."""
    hook = sae.cfg.hook
    pos, neg, source = read_concept(lm, concept.positive, concept.negative, hook, read=cfg.read)
    feat, rise = concept_feature(sae, pos, neg)
    dm = diffmean(pos, neg)
    dirs: dict[str, torch.Tensor] = {}
    selected: dict[str, dict] = {}
    judge = Judge(hook, sae=sae, feature=feat, target_words=tuple(concept.target_words))
    for m in cfg.methods:
        if m == "sae":
            prompts = STEER_PROMPTS[: cfg.prompts][::2]  # the selection half: the report half stays unseen
            ctx = SelectionContext(lm, sae, pos, neg, judge.target_ids(lm) if concept.target_words else [],
                                   prompts, Positions.parse(cfg.positions), cfg.candidates, mean_norm)
            for name in cfg.select:
                sel = select_direction(name, ctx)
                key = method_name(name)
                dirs[key] = sel.vector
                selected[key] = sel.describe()
        elif m == "diffmean":
            dirs[m] = dm
        elif m == "pca":
            dirs[m] = pca_diff(pos[: min(len(pos), len(neg))], neg[: min(len(pos), len(neg))])
        else:
            dirs[m] = diffmean_sae(sae, pos, neg, top=cfg.sae_top or None).float()
    probe_info: dict[str, Any] = {"kind": "none: the concept has no judge texts (give judge_positive and "
                                          "judge_negative, or at least 3 positive and negative texts)"}
    if concept.judge_positive and concept.judge_negative:
        jp = hook_activations(lm, concept.judge_positive, hook, read=cfg.read)
        jn = hook_activations(lm, concept.judge_negative, hook, read=cfg.read)
        probe = fit_probe(jp, jn, texts=concept.judge_positive + concept.judge_negative)
        judge.probe, judge.probe_bias = probe.w, probe.b
        probe_info = probe.describe()
        probe_info["cos_to_diffmean"] = float(torch.nn.functional.cosine_similarity(probe.w, dm, dim=0))
    else:
        log.warning("concept %s has no judge texts: the probe readout is NaN", concept.name)
    cos = {m: float(torch.nn.functional.cosine_similarity(v, dm, dim=0)) for m, v in dirs.items()}
    return dirs, judge, {"source": source.to_dict(), "feature": feat, "feature_rise": rise, "cos_to_diffmean": cos, "probe": probe_info,
                         "selected": selected}


def method_name(selector: str) -> str:
    """The sweep's method for a selector: `sae` for rise (as it always was), `sae_<selector>` otherwise."""
    return "sae" if selector == "rise" else f"sae_{selector}"


def run_sweep(cfg: SweepConfig, lm: Any = None, sae: Any = None) -> dict[str, Any]:
    """Run the whole sweep; returns the summary (also written to cfg.out)."""
    from steering.setup import check_fit, load_for_steering

    if lm is None or sae is None:
        lm, sae = load_for_steering(cfg.model, cfg.sae, cfg.device)
    else:
        check_fit(lm, sae)
    concepts = [load_concept(c) for c in cfg.concepts]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.json")
    prompts = STEER_PROMPTS[: cfg.prompts]
    split = ["select" if i % 2 == 0 else "report" for i in range(len(prompts))]
    neutral = neutral_texts(cfg.neutral, exclude=[t for c in concepts for t in c.texts])
    stats = measure_stats(lm, neutral, sae.cfg.hook, None)
    kl = NeutralKL(lm, neutral)
    gen_kw = dict(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.sample, seed=cfg.seed)
    base_gen = generate(lm, prompts, [], **gen_kw)
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"mean_norm": stats.mean_norm, "selection": asdict(cfg.rule()),
                               "neutral_texts": neutral, "concepts": {}}
    for concept in concepts:
        dirs, judge, found = concept_directions(lm, sae, concept, cfg, stats.mean_norm)
        log.info("concept %s: SAE feature %d (rise %.3g)", concept.name, found["feature"], found["feature_rise"])
        base_scores = score_generation(lm, base_gen, judge)
        rows += _rows(concept.name, "none", 0.0, prompts, split, base_gen.texts, base_scores, 0.0)
        # Every (method, coeff) at once: one generation over prompts x settings, each row with its own
        # vector, so the sweep costs a few wide forward passes instead of one run per setting.
        settings = [(m, c) for m in dirs for c in cfg.coeffs if c != 0]
        pos = Positions.parse(cfg.positions)
        n = len(prompts)
        results: dict[tuple[str, float], tuple] = {}
        if settings:
            # the same push as add_direction(..., unit="norm"): coeff * mean_norm * unit direction
            vecs = torch.stack([c * stats.mean_norm * dirs[m] / dirs[m].norm().clamp_min(1e-12) for m, c in settings])
            iv = AddVector(sae.cfg.hook, vecs.repeat_interleave(n, 0).unsqueeze(1), 1.0, pos, label="sweep")
            g = generate(lm, prompts * len(settings), [iv], batch_size=n * len(settings), **gen_kw)
            scores = score_generation(lm, g, judge)
            costs = kl.many(sae.cfg.hook, vecs, pos)
            for j, (m, c) in enumerate(settings):
                sl = slice(j * n, (j + 1) * n)
                results[(m, c)] = (g.texts[sl], scores[sl], costs[j])
                key = "feature" if cfg.select_by == "sae_feature" else cfg.select_by
                log.info("  %s x %g: %s=%.3g, KL %.3g", m, c, cfg.select_by, mean_scores(scores[sl])[key], costs[j])
        for method in dirs:
            for c in cfg.coeffs:
                # coefficient 0 is exactly no steering (tested), so it reuses the unsteered run
                texts, scores_c, cost = (base_gen.texts, base_scores, 0.0) if c == 0 else results[(method, c)]
                rows += _rows(concept.name, method, c, prompts, split, texts, scores_c, cost)
        _write_jsonl(out / "rows.jsonl", rows)  # after every concept: a long sweep keeps what it finished
        chosen = select(rows, concept.name, list(dirs), cfg.rule())
        summary["concepts"][concept.name] = {**found, "methods": chosen, "examples": _examples(rows, concept.name, chosen)}
    _write_jsonl(out / "rows.jsonl", rows)
    atomic_write_json(out / "summary.json", summary)
    table = format_table(summary) + "\n\n" + format_notes(summary)
    atomic_write_bytes(out / "table.md", (table + "\n").encode())
    from steering.plot import plot_sweep

    shown = copy.copy(cfg)  # one curve per method the sweep ran, the sae_<selector> ones included
    shown.methods = tuple(dict.fromkeys(r["method"] for r in rows if r["method"] != "none"))
    plot_sweep(rows, shown, out / "plot.png")
    return summary


def _rows(concept: str, method: str, coeff: float, prompts: list[str], split: list[str], texts: list[str],
          scores: list[dict[str, float]], kl: float) -> list[dict[str, Any]]:
    """One row per prompt; the judge's `feature` readout is named `sae_feature`: it is the sae method's own."""
    out = []
    for i in range(len(prompts)):
        sc = dict(scores[i])
        sc["sae_feature"] = sc.pop("feature")
        out.append({"concept": concept, "method": method, "coeff": coeff, "prompt_index": i, "split": split[i],
                    "prompt": prompts[i], "text": texts[i], **sc, "kl": kl})
    return out


def _examples(rows: list[dict[str, Any]], concept: str, chosen: dict[str, Any]) -> list[dict[str, Any]]:
    """The first held-out prompt's text per method at its chosen coefficient (what the table's row reads)."""
    out = []
    for method, r in chosen.items():
        hit = [x for x in rows if x["concept"] == concept and x["method"] == method and x["coeff"] == r["coeff"]
               and x["split"] == "report"]
        if hit:
            out.append({"method": method, "coeff": r["coeff"], "prompt": hit[0]["prompt"], "text": hit[0]["text"]})
    return out


COLUMNS = ("coeff", "probe", "sae_feature", "target_logprob", "target_hit", "ppl", "distinct_2", "compression", "kl")


def format_table(summary: dict[str, Any]) -> str:
    """Markdown: one row per concept and method (held-out prompts, at the chosen coefficient). `probe` is
    fitted on judge texts no method reads; `sae_feature` is the sae method's own feature (it favours sae)."""
    lines = ["| concept | method | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for name, c in summary["concepts"].items():
        for method, r in c["methods"].items():
            sel = c.get("selected", {}).get(method, {})
            if method == "sae":
                label = f"sae (feature {c['feature']})"
            elif sel.get("feature") is not None:
                label = f"{method} (feature {sel['feature']})"
            else:
                label = method
            lines.append(f"| {name} | {label} | " + " | ".join(_fmt(r[k]) for k in COLUMNS) + " |")
    return "\n".join(lines)


def format_notes(summary: dict[str, Any]) -> str:
    """What the table's judges are and how the coefficient was chosen, under the table."""
    rule = summary["selection"]
    budget = "no KL budget" if rule["max_kl"] is None else f"KL <= {rule['max_kl']:g}"
    lines = [f"Coefficient chosen on the select prompts by {rule['score']} ({budget}, perplexity <= "
             f"{rule['max_ppl_ratio']}x, distinct-2 >= {rule['min_distinct_ratio']}x, compression ratio <= "
             f"{rule['max_compression_ratio']}x the unsteered text's), reported on the other prompts. "
             "sae_feature is the sae method's own feature (it favours sae).", ""]
    for name, c in summary["concepts"].items():
        p = c.get("probe", {})
        if "n_positive" in p:
            lines.append(f"- {name}: probe = {p['kind']} on {p['n_positive']} + {p['n_negative']} judge texts that "
                         f"no method reads (leave-one-out accuracy {_fmt(p['loo_accuracy'])})")
        else:
            lines.append(f"- {name}: probe = {p.get('kind', 'none')}")
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return "nan" if isinstance(x, float) and math.isnan(x) else f"{x:.3g}"


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())
