"""The summary and the markdown table of benchmarks/steering_compare.py: per (layer, concept) the held-out
gains at each budget's chosen coefficient with bootstrap intervals, the random-feature median, the
Spearman of each selection score against measured gain, and the issue's goal check. Reads only the
JSON the experiment caches, so `--table-only` rebuilds a table without loading a model."""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from evals.intervals import bootstrap_interval, stratified_mean_interval, stratified_ratio_interval
from workbench.io import atomic_write_bytes

CONTROLS = ("diffmean", "pca", "diffmean_sae")
SCORES = ("rise", "output", "concept_output", "gradient")  # the per-feature scores Spearman ranks
MEASURES = ("target_hit", "target_logprob", "ppl", "distinct_2", "compression")


def per_prompt(rows: list[dict], key: str, n_prompts: int) -> np.ndarray:
    """`[prompts]` the measure averaged over decodes (NaN ignored)."""
    out = np.full(n_prompts, np.nan)
    for i in range(n_prompts):
        v = [r[key] for r in rows if r["prompt"] == i and not (isinstance(r[key], float) and math.isnan(r[key]))]
        if v:
            out[i] = float(np.mean(v))
    return out


def spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def summarise(a: argparse.Namespace, run: Any, concept: Any, base_rows: list[dict], choice: dict, report: dict,
              info: dict) -> dict:
    n = len(run.rep_prompts)
    base = {k: per_prompt(base_rows, k, n) for k in MEASURES}
    out: dict[str, Any] = {"budgets": {}, "spearman": {}, "base": {k: float(np.nanmean(v)) for k, v in base.items()},
                           "features": {m: v.get("feature") for m, v in info["selected"].items()}}
    for b in a.budgets:
        res: dict[str, Any] = {}
        for m in choice:
            if m.startswith("cand_") and b != a.budgets[0]:
                continue
            c = choice[m]["chosen"][str(b)]
            grid = {r["coeff"]: r for r in choice[m]["grid"]}
            rows = base_rows if c == 0 else report[f"{m}@{c:g}"]["rows"]
            if m.startswith("cand_"):
                rows = [r for r in rows if r["decode"] == 0]
                bd = {k: per_prompt([r for r in base_rows if r["decode"] == 0], k, n) for k in MEASURES}
            else:
                bd = base
            r: dict[str, Any] = {"coeff": c, "kl": grid[c]["kl"], "objective": grid[c]["objective"]}
            for k in MEASURES:
                v = per_prompt(rows, k, n)
                r[k] = float(np.nanmean(v))
            for k in ("target_hit", "target_logprob"):
                gain = per_prompt(rows, k, n) - bd[k]
                gain = gain[~np.isnan(gain)]
                iv = bootstrap_interval(gain, n_resamples=a.resamples) if len(gain) else None
                r[f"{k}_gain"] = iv.to_dict() if iv else None
                r[f"{k}_gains"] = gain.tolist()  # per held-out prompt, for the pooled interval over concepts
            steered = [x["steered_positions"] for x in rows] if c != 0 else []
            read = [x["read_positions"] for x in rows] if c != 0 else []
            r["all_positions_steered"] = bool(steered) and steered == read
            res[m] = r
        rand = [res[m] for m in res if m.startswith("random_")]
        if rand:
            res["random_median"] = {
                "coeff": float(np.median([x["coeff"] for x in rand])), "kl": float(np.median([x["kl"] for x in rand])),
                **{k: float(np.median([x[k] for x in rand])) for k in MEASURES},
                **{f"{k}_gain": {"estimate": float(np.median([x[f"{k}_gain"]["estimate"] for x in rand])),
                                 "low": math.nan, "high": math.nan, "n": len(rand)}
                   for k in ("target_hit", "target_logprob")}}
        out["budgets"][str(b)] = res
    # Spearman: each score of the candidates vs their measured held-out log-prob gain
    res0 = out["budgets"][str(a.budgets[0])]
    cands = info["spearman_set"]
    gains = [res0[f"cand_{c['feature']}"]["target_logprob_gain"]["estimate"] for c in cands]
    for s in SCORES:
        out["spearman"][s] = spearman([c[s] for c in cands], gains)
    out["spearman_n"] = len(cands)
    return out


def fmt_iv(d: dict | None, nd: int = 2) -> str:
    if not d:
        return "n/a"
    if math.isnan(d["low"]):
        return f"{d['estimate']:.{nd}f}"
    return f"{d['estimate']:.{nd}f} [{d['low']:.{nd}f}, {d['high']:.{nd}f}]"


def ratio_interval(summ: dict[str, dict], budget: str, method: str, key: str, resamples: int = 1000,
                   seed: int = 0) -> tuple[float, float]:
    """95% interval of (mean over concepts of METHOD's held-out gain) / (the same for DiffMean):
    `evals.intervals.stratified_ratio_interval` over each concept's held-out prompts, both methods on
    the same draw. NaNs where a concept lacks per-prompt gains, or where DiffMean's gain on those same
    draws is not surely positive (the lower end of its own interval at or below 0: the ratio then has
    no upper end)."""
    k = f"{key}_gains"
    rows = [summ[c]["budgets"][budget] for c in summ]
    if not rows or any(k not in r.get(method, {}) or k not in r.get("diffmean", {}) for r in rows):
        return math.nan, math.nan
    return paired_ratio([r[method][k] for r in rows], [r["diffmean"][k] for r in rows], resamples, seed)


def paired_ratio(num: list[list[float]], den: list[list[float]], resamples: int = 1000,
                 seed: int = 0) -> tuple[float, float]:
    """`stratified_ratio_interval`'s ends, or NaNs where the denominator's gain is not surely positive
    (the ratio then has no upper end) or the groups do not pair up (missing or different held-out prompt counts)."""
    if not num or len(num) != len(den) or any(len(x) != len(y) or not len(x) for x, y in zip(num, den)):
        return math.nan, math.nan
    if stratified_mean_interval(den, n_resamples=resamples, seed=seed).low <= 0:
        return math.nan, math.nan
    iv = stratified_ratio_interval(num, den, n_resamples=resamples, seed=seed)
    return iv.low, iv.high


def fmt_ratio(x: float, ci: tuple[float, float]) -> str:
    return f"{x:.2f}" if math.isnan(ci[0]) else f"{x:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def goal_check(a: argparse.Namespace, summ: dict[str, dict], budget: str) -> tuple[list[str], dict]:
    """The issue's goal at one budget: best SAE selector (by mean log-prob gain over concepts) vs DiffMean
    and the random median; and the Spearman of that selector's own score (concept_output where it has none)."""
    concepts = list(summ)
    sae_methods = [f"sae_{s}" for s in a.selectors]

    def mean_gain(m: str, k: str) -> float:
        return float(np.mean([summ[c]["budgets"][budget][m][f"{k}_gain"]["estimate"] for c in concepts]))

    best = max(sae_methods, key=lambda m: mean_gain(m, "target_logprob"))
    dm_hit, dm_lp = mean_gain("diffmean", "target_hit"), mean_gain("diffmean", "target_logprob")
    b_hit, b_lp = mean_gain(best, "target_hit"), mean_gain(best, "target_logprob")
    beats = [summ[c]["budgets"][budget][best]["target_logprob_gain"]["estimate"]
             > summ[c]["budgets"][budget]["random_median"]["target_logprob_gain"]["estimate"] for c in concepts]
    score = best.removeprefix("sae_")
    score = score if score in SCORES else "concept_output"
    rho = [summ[c]["spearman"][score] for c in concepts]
    rho_mean = float(np.nanmean(rho)) if not all(math.isnan(r) for r in rho) else float("nan")
    ratio = lambda x, y: x / y if y > 0 else float("nan")  # noqa: E731
    n_res = getattr(a, "resamples", 1000)
    ci = lambda m, k: ratio_interval(summ, budget, m, k, n_res)  # noqa: E731
    res = {"best": best, "hit_ratio": ratio(b_hit, dm_hit), "lp_ratio": ratio(b_lp, dm_lp),
           "hit_ratio_ci": ci(best, "target_hit"), "lp_ratio_ci": ci(best, "target_logprob"),
           "beats_random": sum(beats) / len(beats), "spearman": rho_mean, "score": score}
    yes = lambda ok: "met" if ok else "missed"  # noqa: E731
    lines = [
        f"- best SAE method (mean held-out log-prob gain over {len(concepts)} concepts): **{best}**"
        f" (the best of {len(sae_methods)} picked on the held-out prompts themselves, which flatters it; the"
        f" blind choice below is not)",
        f"- hit-rate gain {b_hit:.3f} vs DiffMean {dm_hit:.3f}: ratio {fmt_ratio(res['hit_ratio'], res['hit_ratio_ci'])} "
        f"(goal >= 0.8: {yes(res['hit_ratio'] >= 0.8)})",
        f"- log-prob gain {b_lp:.3f} vs DiffMean {dm_lp:.3f}: ratio {fmt_ratio(res['lp_ratio'], res['lp_ratio_ci'])} "
        f"(goal >= 0.8: {yes(res['lp_ratio'] >= 0.8)})",
        f"- beats the random-feature median (log-prob gain) on {sum(beats)}/{len(beats)} concepts (goal >= 75%: "
        f"{yes(res['beats_random'] >= 0.75)})",
        f"- Spearman of the {score} score vs measured log-prob gain over {summ[concepts[0]]['spearman_n']} "
        f"candidates, mean over concepts: {rho_mean:.2f} (goal >= 0.3: {yes(rho_mean >= 0.3)})",
    ]
    blind = blind_choice(a, summ, budget)
    if blind is not None:
        res.update(blind=blind, blind_hit_ratio=ratio(mean_gain(blind, "target_hit"), dm_hit),
                   blind_lp_ratio=ratio(mean_gain(blind, "target_logprob"), dm_lp),
                   blind_hit_ratio_ci=ci(blind, "target_hit"), blind_lp_ratio_ci=ci(blind, "target_logprob"))
        lines.append(f"- chosen blind to the held-out prompts (largest selection-prompt objective): **{blind}**: "
                     f"held-out hit-rate ratio {fmt_ratio(res['blind_hit_ratio'], res['blind_hit_ratio_ci'])}, "
                     f"log-prob ratio {fmt_ratio(res['blind_lp_ratio'], res['blind_lp_ratio_ci'])}"
                     f" (goal >= 0.8: {yes(min(res['blind_hit_ratio'], res['blind_lp_ratio']) >= 0.8)})")
    return lines, res


def blind_choice(a: argparse.Namespace, summ: dict[str, dict], budget: str) -> str | None:
    """The SAE selector a user would pick without the held-out prompts: the largest mean steered target
    log-prob on the selection prompts at its chosen coefficient (every method of a concept shares the
    unsteered baseline, so the raw objective ranks them). None where no selector recorded one."""
    rows = lambda m: [summ[c]["budgets"][budget][m] for c in summ]  # noqa: E731
    scored = [m for m in (f"sae_{s}" for s in a.selectors) if all("objective" in r for r in rows(m))]
    return max(scored, key=lambda m: float(np.mean([r["objective"] for r in rows(m)]))) if scored else None


def goal_summary(a: argparse.Namespace, runs: dict[str, dict], summ: dict[str, dict[str, dict]]) -> list[str]:
    """One row per (SAE, budget): the goal check of every SAE side by side, so the layer sweep and the
    SAE-size comparison read off one table. Ratios against DiffMean at the same layer, with the paired
    bootstrap interval over held-out prompts."""
    out = ["## Goal check, every SAE (ratios to DiffMean at the same hook and budget, 95% paired bootstrap)", "",
           "Intervals resample the held-out prompts of each concept (both methods on the same draw); the "
           "coefficients, the best method and the blind choice are held fixed, so the selection step's own "
           "variance is not in them.", "",
           "| SAE | hook | features | concepts | KL budget | best on held-out | hit ratio | log-prob ratio | "
           "chosen blind | blind hit ratio | blind log-prob ratio | beats random | Spearman |",
           "|---|---|---:|---:|---:|---|---|---|---|---|---|---:|---:|"]
    for b in a.budgets:
        for label, run in runs.items():
            if not summ[label]:
                continue
            r = goal_check(a, summ[label], str(b))[1]
            nan2 = (math.nan, math.nan)
            out.append(f"| {label} | {run['hook']} | {run['features']} | {len(summ[label])} | {b:g} | {r['best']} | "
                       f"{fmt_ratio(r['hit_ratio'], r['hit_ratio_ci'])} | {fmt_ratio(r['lp_ratio'], r['lp_ratio_ci'])} | "
                       f"{r.get('blind', 'n/a')} | {fmt_ratio(r.get('blind_hit_ratio', math.nan), r.get('blind_hit_ratio_ci', nan2))} | "
                       f"{fmt_ratio(r.get('blind_lp_ratio', math.nan), r.get('blind_lp_ratio_ci', nan2))} | "
                       f"{r['beats_random']:.0%} | {r['spearman']:.2f} ({r['score']}) |")
    return out + [""]


def same_hook_rows(a: argparse.Namespace, runs: dict[str, dict], summ: dict[str, dict[str, dict]]) -> list[str]:
    """Does a larger SAE change the answer? Every pair of SAEs at one hook, the larger first (more features;
    at equal features, more training tokens): the held-out gain of each one's blind choice (the selector a
    user would have picked), larger over smaller, paired over the concepts both finished and their
    held-out prompts. Every pair, so a width step and a data step read apart. Both runs read the same
    held-out prompts and greedy decode; seeded samples are seeded per batch, so they pair by prompt, not draw."""
    by_hook: dict[str, list[str]] = {}
    for label, run in runs.items():
        if summ.get(label):
            by_hook.setdefault(run["hook"], []).append(label)
    size = lambda x: (runs[x]["features"], runs[x].get("train_tokens", 0))  # noqa: E731
    out = []
    for hook, labels in by_hook.items():
        labels.sort(key=size, reverse=True)
        for i, big in enumerate(labels):
            for small in labels[i + 1:]:
                common = [c for c in summ[big] if c in summ[small]]
                for b in map(str, a.budgets) if common else ():
                    sb, ss = ({c: summ[x][c] for c in common} for x in (big, small))
                    mb, ms = blind_choice(a, sb, b), blind_choice(a, ss, b)
                    if mb is None or ms is None:
                        continue
                    cells = []
                    for k in ("target_hit", "target_logprob"):
                        num = [sb[c]["budgets"][b][mb].get(f"{k}_gains", []) for c in common]
                        den = [ss[c]["budgets"][b][ms].get(f"{k}_gains", []) for c in common]
                        est = (np.mean([sb[c]["budgets"][b][mb][f"{k}_gain"]["estimate"] for c in common])
                               / np.mean([ss[c]["budgets"][b][ms][f"{k}_gain"]["estimate"] for c in common]))
                        cells.append(fmt_ratio(float(est), paired_ratio(num, den, getattr(a, "resamples", 1000))))
                    out.append(f"| {hook} | {big} ({_size_label(runs[big])}) | {small} ({_size_label(runs[small])}) | {b} | "
                               f"{len(common)} | {mb} | {ms} | {cells[0]} | {cells[1]} |")
    if not out:
        return []
    return ["## Larger vs smaller SAE at the same hook (blind choices, held-out gain ratio, 95% paired bootstrap)", "",
            "| hook | larger (features, training tokens) | smaller | KL budget | concepts | larger's blind choice | "
            "smaller's blind choice | hit gain ratio | log-prob gain ratio |",
            "|---|---|---|---:|---:|---|---|---|---|", *out, ""]


def _size_label(run: dict) -> str:
    t = run.get("train_tokens", 0)
    return f"{run['features']}, {t / 1e6:.1f}M tok" if t else f"{run['features']}"


def write_table(a: argparse.Namespace, runs: dict[str, dict], summ: dict[str, dict[str, dict]], path: Path,
                wall: float) -> str:
    import torch as _t

    methods = [f"sae_{s}" for s in a.selectors] + list(CONTROLS) + ["random_median"]
    lines = ["# Steering: SAE feature selectors vs DiffMean at one KL budget", "",
             "Command: `python " + " ".join(shlex.quote(x) for x in sys.argv) + "`", "",
             f"Date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared), torch {_t.__version__}, "
             f"device {a.device}; wall {wall:.0f} s (this invocation; cached stages are not re-timed).", "",
             f"Sizes: {len(a.concepts)} concepts ({', '.join(a.concepts)}); {a.select_prompts} selection prompts and "
             f"{a.report_prompts} held-out prompts per concept (disjoint); greedy + {a.samples} seeded samples per "
             f"prompt; {a.max_new_tokens} new tokens; coefficient grid {a.coeffs} x the hook's mean norm (and 0); "
             f"KL on {a.neutral} neutral texts of {a.neutral_tokens} tokens; {a.random} random features; "
             f"{a.spearman} pool candidates for Spearman; candidate pool {a.candidates} per source. SAE features are "
             "added (not clamped) at every position. Gains: steered minus unsteered on the held-out prompts, "
             f"decodes averaged per prompt, 95% percentile-bootstrap interval over prompts ({a.resamples} resamples, "
             "evals.intervals); the random median has no interval.", ""]
    for label, run in runs.items():
        lines.append(f"SAE `{label}`: {run['sae_dir']} at {run['hook']} ({run['features']} features), hook mean norm "
                     f"{run['mean_norm']:.3g}; concepts done: {', '.join(summ[label]) or 'none'}")
    lines.append("")
    lines += goal_summary(a, runs, summ) + same_hook_rows(a, runs, summ)
    for b in a.budgets:
        for label in runs:
            s = summ[label]
            if not s:
                continue
            lines += [f"## {label}, KL budget {b:g} nats/token (mean over concepts; per-concept rows in summary.json)", "",
                      "| method | coeff | KL | hit gain [95%, pooled prompts] | log-prob gain [95%, pooled prompts] | hit | ppl | distinct-2 | compression |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
            base = {k: float(np.mean([s[c]["base"][k] for c in s])) for k in MEASURES}
            lines.append(f"| unsteered | 0 | 0 | 0 | 0 | {base['target_hit']:.2f} | {base['ppl']:.2f} | "
                         f"{base['distinct_2']:.2f} | {base['compression']:.2f} |")
            for m in methods:
                rs = [s[c]["budgets"][str(b)][m] for c in s if m in s[c]["budgets"][str(b)]]
                if not rs:
                    continue
                mean = lambda k: float(np.mean([r[k] for r in rs]))  # noqa: E731
                gain = {}
                for k in ("target_hit", "target_logprob"):
                    est = float(np.mean([r[f"{k}_gain"]["estimate"] for r in rs]))
                    pooled = [x for r in rs for x in r.get(f"{k}_gains", [])]
                    # one interval over every (concept, held-out prompt): equal prompts per concept, so the
                    # pooled mean is the mean over concepts; the random median has no per-prompt gains
                    iv = bootstrap_interval(pooled, n_resamples=a.resamples).to_dict() if pooled else None
                    gain[k] = {"estimate": est, "low": iv["low"] if iv else math.nan, "high": iv["high"] if iv else math.nan}
                lines.append(f"| {m} | {mean('coeff'):.3g} | {mean('kl'):.3f} | {fmt_iv(gain['target_hit'])} | "
                             f"{fmt_iv(gain['target_logprob'])} | {mean('target_hit'):.2f} | {mean('ppl'):.2f} | "
                             f"{mean('distinct_2'):.2f} | {mean('compression'):.2f} |")
            lines += ["", "Per concept, log-prob gain [95%] (hit gain):", "",
                      "| concept | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
            for c in s:
                cells = []
                for m in methods:
                    r = s[c]["budgets"][str(b)].get(m)
                    cells.append("" if r is None else f"{fmt_iv(r['target_logprob_gain'])} ({r['target_hit_gain']['estimate']:.2f})")
                lines.append(f"| {c} | " + " | ".join(cells) + " |")
            feats = "; ".join(f"{c}: " + ", ".join(f"{m.removeprefix('sae_')} {f}" for m, f in s[c]["features"].items()
                                                     if f is not None) for c in s)
            lines += ["", f"Features picked ({feats}); sae_ts steers along a solved vector.", "", "Goal check:", ""] + goal_check(a, s, str(b))[0] + [""]
    lines += ["## Spearman: selection score vs measured held-out log-prob gain (0.25 budget, greedy)", "",
              "| SAE | concept | " + " | ".join(SCORES) + " |", "|---|---|" + "---:|" * len(SCORES)]
    for label, s in summ.items():
        for c in s:
            lines.append(f"| {label} | {c} | " + " | ".join(f"{s[c]['spearman'][k]:.2f}" for k in SCORES) + " |")
        lines.append(f"| {label} | mean | " + " | ".join(
            f"{np.nanmean([s[c]['spearman'][k] for c in s]):.2f}" for k in SCORES) + " |")
    lines.append("")
    pos_ok = all(r.get("all_positions_steered", True) for s in summ.values() for c in s.values()
                 for bb in c["budgets"].values() for m, r in bb.items() if m != "random_median" and r["coeff"] != 0)
    lines.append(f"Every steered generation steered every position it read (prompt + generated, KV cache on): "
                 f"{'yes' if pos_ok else 'NO: see summary.json all_positions_steered'}.")
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(path, text.encode())
    return text
