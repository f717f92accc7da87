"""The result of evaluating one SAE: a printed table, a notebook view, and eval.json on disk."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench.io import atomic_save_safetensors, atomic_write_json

EVAL_FILE = "eval.json"
FEATURES_FILE = "eval_features.safetensors"
EVAL_FORMAT = "sae-workbench-eval"
EVAL_FORMAT_VERSION = 1

# (section, key, label, format) of the headline rows, in the order a reader wants them.
HEADLINE: tuple[tuple[str, str, str, str], ...] = (
    ("spliced", "ce_loss_score", "CE loss score", "{:.4f}"),
    ("spliced", "kl_div_score", "KL div score", "{:.4f}"),
    ("spliced", "ce_clean", "CE clean (nats)", "{:.4f}"),
    ("spliced", "ce_sae", "CE with SAE", "{:.4f}"),
    ("spliced", "ce_zero", "CE zero-ablated", "{:.4f}"),
    ("spliced", "ce_mean", "CE mean-ablated", "{:.4f}"),
    ("spliced", "ce_error_diff", "CE error term - clean", "{:+.2e}"),
    ("spliced", "error_rel_diff", "error term |dx|/|x|", "{:.2e}"),
    ("spliced", "kl_sae", "KL to clean (SAE)", "{:.4f}"),
    ("spliced", "ce_tokens", "spliced: tokens scored", "{:,}"),
    ("reconstruction", "tokens", "held-out tokens", "{:,}"),
    ("data", "trained_on_pct", "held-out rows trained on %", "{:.1f}"),
    ("reconstruction", "fvu", "FVU", "{:.4f}"),
    ("reconstruction", "explained_variance", "explained variance", "{:.4f}"),
    ("reconstruction", "saebench_explained_variance", "expl. var. (SAEBench 0.6.0)", "{:.4f}"),
    ("reconstruction", "saebench_explained_variance_legacy", "expl. var. (SAEBench legacy)", "{:.4f}"),
    ("reconstruction", "mse", "MSE", "{:.4g}"),
    ("reconstruction", "cossim", "cosine", "{:.4f}"),
    ("reconstruction", "l2_ratio", "L2 ratio", "{:.4f}"),
    ("reconstruction", "relative_reconstruction_bias", "rel. reconstruction bias", "{:.4f}"),
    ("reconstruction", "l0", "L0", "{:.2f}"),
    ("reconstruction", "l1", "L1", "{:.4g}"),
    ("health", "tokens", "density: tokens", "{:,}"),
    ("health", "dead_pct", "dead features %", "{:.2f}"),
    ("health", "dense_1pct", "dense > 1%", "{:d}"),
    ("health", "dense_10pct", "dense > 10%", "{:d}"),
    ("weights", "enc_dec_cos_mean", "enc-dec cosine (mean)", "{:.4f}"),
    ("weights", "mean_max_decoder_cos", "mean max decoder cosine", "{:.4f}"),
)


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    try:
        return spec.format(value)
    except (ValueError, TypeError):
        return str(value)


@dataclass
class EvalResult:
    """Everything `evaluate` measured for one SAE. Sections are plain dicts (what eval.json holds)."""

    sae: dict[str, Any]
    reconstruction: dict[str, Any] = field(default_factory=dict)
    spliced: dict[str, Any] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)
    probing: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)  # supervised evaluation on a task (evals.supervised)
    absorption: dict[str, Any] = field(default_factory=dict)  # first-letter absorption (evals.absorption)
    settings: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # held-out fraction, rows the SAE trained on, its cache
    notes: list[str] = field(default_factory=list)
    per_feature: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return str(self.sae.get("name") or self.sae.get("dir") or "sae")

    def get(self, key: str) -> Any:
        """A metric by name from whichever section holds it (`result.get("fvu")`)."""
        for section in (self.spliced, self.reconstruction, self.health, self.weights):
            if key in section:
                return section[key]
        return None

    def interval(self, key: str) -> dict[str, Any] | None:
        """A metric's bootstrap interval (estimate, low, high, n, level, resampled) if it has one."""
        for section in (self.spliced, self.reconstruction):
            if key in (section.get("intervals") or {}):
                return section["intervals"][key]
        return ((self.probing.get("intervals") or {}).get("mean") or {}).get(key)  # accuracies averaged over classes

    def rows(self) -> list[tuple[str, str]]:
        out = []
        for section, key, label, spec in HEADLINE:
            val = getattr(self, section).get(key)
            if val is not None:
                iv = (getattr(self, section).get("intervals") or {}).get(key)
                shown = _fmt(val, spec)
                if iv:  # the 95% bootstrap interval beside the value, in its format
                    shown += f" [{_fmt(iv['low'], spec)}, {_fmt(iv['high'], spec)}]"
                out.append((label, shown))
        if self.probing.get("skipped"):
            out.append(("probing", "skipped (see note)"))
        elif self.probing.get("mean") is not None:
            m, se = self.probing["mean"], self.probing.get("mean_se", {})

            ivs = (self.probing.get("intervals") or {}).get("mean") or {}

            def acc(key: str) -> str:
                if key in ivs:  # the bootstrap 95% interval (test examples resampled) where probing gives one
                    return f"{m[key]:.3f} [{ivs[key]['low']:.3f}, {ivs[key]['high']:.3f}]"
                return f"{m[key]:.3f} ± {se[key]:.3f}" if key in se else f"{m[key]:.3f}"
            for k in self.probing["ks"]:
                out.append((f"probe top-{k} (SAE / raw)", f"{acc(f'sae_top{k}')} / {acc(f'raw_top{k}')}"))
            out.append(("probe raw, all dims", acc("raw_full")))
            if "test_documents" in self.probing:
                out.append(("probe: documents (test)", f"{self.probing['documents_probed']:,} "
                                                       f"({self.probing['test_documents']:,})"))
        if self.probing.get("label_sets"):
            from evals.probe_corpus import label_set_rows

            out.extend(label_set_rows(self.probing["label_sets"]))
        out.extend(absorption_rows(self.absorption))
        if self.task:  # the model's own accuracy on the task first; the rows follow the table
            b = self.task["baseline"]
            out.append((f"{self.task['task']['task']}: accuracy / LD",
                        f"{b['accuracy']:.3f} / {b['ld_mean']:.3f} ({b['prompts']} test prompts)"))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"format": EVAL_FORMAT, "format_version": EVAL_FORMAT_VERSION, "sae": self.sae,
                "reconstruction": self.reconstruction, "spliced": self.spliced, "health": self.health,
                "weights": self.weights, "probing": self.probing, "absorption": self.absorption, "settings": self.settings, "data": self.data,
                "notes": self.notes, **({"task": self.task} if self.task else {})}

    def save(self, directory: str | Path) -> Path:
        """Write eval.json (and per-feature tensors) atomically into `directory`; returns eval.json's path."""
        d = Path(directory)
        if self.per_feature:
            atomic_save_safetensors(d / FEATURES_FILE, self.per_feature, {"format": EVAL_FORMAT})
        atomic_write_json(d / EVAL_FILE, self.to_dict())
        return d / EVAL_FILE

    def __str__(self) -> str:
        rows = self.rows()
        width = max((len(label) for label, _ in rows), default=10)
        head = f"{self.name}  ({self.sae.get('architecture', '?')}, {self.sae.get('num_features', '?')} features, " \
               f"hook {self.sae.get('hook', '?')})"
        lines = [head] + [f"  {label:<{width}}  {val}" for label, val in rows] + [f"  note: {n}" for n in self.notes]
        if self.task:
            lines.append(_task_table(self.task))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        cells = "".join(f"<tr><td style='text-align:left'>{html.escape(lab)}</td><td>{html.escape(v)}</td></tr>"
                        for lab, v in self.rows())
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        hist = self.health.get("log10_density_hist")
        spark = _density_svg(hist) if hist else ""
        return (f"<div><b>{html.escape(self.name)}</b> <small>{html.escape(str(self.sae.get('architecture', '')))}, "
                f"{self.sae.get('num_features', '?')} features, {html.escape(str(self.sae.get('hook', '')))}</small>"
                f"<table>{cells}</table>{spark}"
                f"{'<pre>' + html.escape(_task_table(self.task)) + '</pre>' if self.task else ''}{'<ul>' + notes + '</ul>' if notes else ''}</div>")


def absorption_rows(a: dict[str, Any]) -> list[tuple[str, str]]:
    """The absorption lines of the table: the two SAEBench means and what they rest on."""
    if not a or a.get("mean_absorption_fraction") is None:
        return [("absorption", "no letter evaluated (see note)")] if a else []
    top = sorted(a["absorbing_features"].items(), key=lambda kv: -sum(len(r["tokens"]) for r in kv[1]))[:3]
    named = ", ".join(f"#{f} ({'/'.join(r['letter'] for r in rows)})" for f, rows in top) or "none"
    return [("absorption fraction (mean)", f"{a['mean_absorption_fraction']:.4f}"),
            ("full absorption rate (mean)", f"{a['mean_full_absorption']:.4f}"),
            ("absorption: letters (words)", f"{a['letters_evaluated']} ({a['words']:,}, {a['test_words']:,} test)"),
            ("top absorbing features", named)]


def _task_table(task: dict[str, Any]) -> str:
    """The supervised evaluation's table (evals.supervised.run.format_table)."""
    from evals.supervised.run import format_table

    return format_table(task)


def _density_svg(hist: dict[str, Any], width: int = 240, height: int = 60) -> str:
    """A small inline bar chart of the log10-density histogram (no plotting library needed in notebooks)."""
    counts = hist["counts"]
    top = max(max(counts), 1)
    bw = width / len(counts)
    bars = "".join(f"<rect x='{i * bw:.1f}' y='{height - height * c / top:.1f}' width='{bw * 0.9:.1f}' "
                   f"height='{height * c / top:.1f}' fill='#4c72b0'/>" for i, c in enumerate(counts))
    return (f"<div><small>log10 feature density, {hist['edges'][0]} .. {hist['edges'][-1]} "
            f"(dead: {hist['dead']})</small><br><svg width='{width}' height='{height}'>{bars}</svg></div>")


def comparison_table(results: list[EvalResult]) -> str:
    """One line per SAE, for several SAEs side by side."""
    cols = [("L0", "l0", "{:.1f}"), ("FVU", "fvu", "{:.4f}"), ("CE score", "ce_loss_score", "{:.4f}"),
            ("KL score", "kl_div_score", "{:.4f}"), ("CE+SAE", "ce_sae", "{:.4f}"), ("dead%", "dead_pct", "{:.2f}")]
    names = [r.name for r in results]
    w = max([len(n) for n in names] + [3])

    def cell(r: EvalResult, key: str, spec: str) -> str:
        iv = r.interval(key)  # the 95% interval as value ± half its width (the exact ends are in eval.json)
        val = _fmt(r.get(key), spec)
        return f"{val}±{(iv['high'] - iv['low']) / 2:.4f}" if iv and r.get(key) is not None else val
    cells = [[cell(r, k, s) for _, k, s in cols] for r in results]
    widths = [max([9, len(c[0])] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    head = f"{'SAE':<{w}}  " + "  ".join(f"{c[0]:>{widths[i]}}" for i, c in enumerate(cols))
    lines = [head]
    for r, row in zip(results, cells):
        lines.append(f"{r.name:<{w}}  " + "  ".join(f"{v:>{widths[i]}}" for i, v in enumerate(row)))
    lines.append("(± half the width of a bootstrap 95% interval)" if any(r.interval("fvu") or r.interval("ce_loss_score")
                                                                       for r in results) else "")
    return "\n".join(ln for ln in lines if ln)
