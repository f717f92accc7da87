"""What an SAE is, in one line (for its repr) and as a table (for notebooks).

`describe_sae` asks the SAE's class for its policy (whether k sets its sparsity, its own
hyper-parameters such as a threshold `inference` rule) instead of testing architecture names.
`SparseAutoencoder.extra_repr` is meant to print the same line (saes cannot import evals).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evals.features.html import esc


ABSORPTION_FACTS = ("mean_absorption_fraction", "mean_full_absorption", "mean_num_split_features",
                    "letters_evaluated", "words")


def _rule(sae: Any) -> list[str]:
    cls, cfg = type(sae), sae.cfg
    parts = []
    if getattr(cls, "uses_k", True):
        parts.append(f"k={cfg.k}")
    for name in getattr(cls, "hyperparameters", ()):
        if hasattr(cfg, name):
            parts.append(f"{name}={getattr(cfg, name)}")
    return parts


def sae_facts(sae: Any, directory: str | Path | None = None) -> dict[str, Any]:
    """Architecture, hook point, sizes, rule, model and, when saved, training and eval summaries."""
    cfg = sae.cfg
    facts: dict[str, Any] = {
        "class": type(sae).__name__, "architecture": cfg.architecture, "hook": cfg.hook or "?", "d_in": cfg.d_in,
        "width": cfg.num_features, "rule": ", ".join(_rule(sae)), "model": cfg.model_id or "?",
    }
    train = cfg.train or {}
    if train:
        facts["trained on"] = f"{train.get('cache', '?')}" + (f", {train.get('max_tokens'):,} tokens max" if train.get("max_tokens") else "")
    d = Path(directory) if directory else getattr(sae, "directory", None)
    if d is not None:
        for name in ("metrics.json", "eval.json", "summary.json"):
            p = Path(d) / name
            if p.is_file():
                try:
                    found = json.loads(p.read_text())
                    if name == "eval.json" and isinstance(found.get("absorption"), dict):  # its means, not every letter
                        found["absorption"] = {k: v for k, v in found["absorption"].items()
                                               if k in ABSORPTION_FACTS}
                    facts.update({f"{name[:-5]}: {k}": v for k, v in _flat(found).items()})
                except (OSError, json.JSONDecodeError):
                    pass
    return facts


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[f"{prefix}{k}"] = v
    return out


def describe_sae(sae: Any) -> str:
    """`TopKSAE(topk, blocks.8.hook_resid_post, d_in=576, width=4608, k=32, model=...)`: for `repr`."""
    f = sae_facts(sae)
    parts = [f["architecture"], f["hook"], f"d_in={f['d_in']}", f"width={f['width']}"]
    if f["rule"]:
        parts.append(f["rule"])
    parts.append(f"model={f['model']}")
    return f"{f['class']}({', '.join(parts)})"


def facts_table_html(facts: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(_fmt(v))}</td></tr>" for k, v in facts.items())
    return f'<table class="fc-facts">{rows}</table>'


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def sae_repr_html(sae: Any) -> str:
    """Notebook display of a bare SAE object: its facts as a table."""
    return f"<div><b>{esc(type(sae).__name__)}</b>{facts_table_html(sae_facts(sae))}</div>"
