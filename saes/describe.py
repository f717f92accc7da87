"""What a saved SAE is, for `print(sae)`'s neighbours: `sae.summary()` and the notebook display.

Kept out of `base.py` because it reads files beside the SAE: the training run's summary.json (a
parent of the SAE directory, written by the trainer) and eval.json (written next to the SAE by
`sae eval`). saes cannot import evals, so this reads eval.json as plain JSON and shows its
top-level numbers. Missing or damaged files are skipped: a summary never fails on a bad file.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any


def sae_summary(sae: Any) -> dict[str, Any]:
    """Architecture, hook, sizes, sparsity rule, model; plus held-out training row and eval headline."""
    c = sae.cfg
    out: dict[str, Any] = {"architecture": c.architecture, "hook": c.hook or "?", "d_in": c.d_in,
                           "width": c.num_features, "rule": _rule(sae), "model": c.model_id or "?"}
    d = getattr(sae, "directory", None)
    if d is None:
        return out
    d = Path(d).resolve()
    for parent in list(d.parents)[:4]:
        rows = _read_json(parent / "summary.json").get("saes", [])
        row = next((r for r in rows if isinstance(r, dict) and _same_dir(parent, r.get("dir"), d)), None)
        if row:
            out.update({f"train: {k}": row[k] for k in ("heldout_fvu", "heldout_l0", "dead_pct") if k in row})
            break
    ev = _read_json(d / "eval.json")
    out.update({f"eval: {k}": v for k, v in ev.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return out


def summary_html(sae: Any) -> str:
    rows = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in sae_summary(sae).items())
    return f"<table><caption>{html.escape(type(sae).__name__)}</caption>{rows}</table>"


def _rule(sae: Any) -> str:
    c, cls = sae.cfg, type(sae)
    parts = [f"k={c.k}"] if cls.uses_k else []
    parts += [f"{n}={getattr(c, n)}" for n in cls.hyperparameters if hasattr(c, n)]
    return ", ".join(parts) or "-"


def _same_dir(run: Path, recorded: Any, d: Path) -> bool:
    """summary.json records each SAE's directory as the trainer saw it (often relative to its cwd)."""
    if not isinstance(recorded, str) or not recorded:
        return False
    p = Path(recorded)
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, run / p, run.parent / p]
    return any(c.resolve() == d for c in candidates) or p.parts[-2:] == d.parts[-2:]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
