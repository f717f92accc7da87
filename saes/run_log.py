"""What a run reports: metric windows (metrics.jsonl), the progress bar, and the run summary.

Per step, each SAE adds its sums (squared error, variance, L0, loss terms) to a *window*; every
`log_every` steps the window becomes one JSON line in metrics.jsonl and is emptied. Window sums
stay on the device until a line needs them (no host sync per step on GPUs), and a checkpoint
stores them, so a resumed run writes the same lines as an uninterrupted one. At the end,
summary.json holds one row per SAE (training and held-out metrics) and the run's throughput.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from workbench.io import atomic_write_bytes

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
# Window entries combined specially into a metric line; every other entry is a per-step mean.
_SPECIAL = ("steps", "sse", "denom", "l0", "lr")


def add_to_window(w: dict[str, Any], sums: dict[str, Tensor], lr: float) -> None:
    """Add one step's sums (`sse`, `denom`, `l0` and loss terms, as tensors) to the window `w`."""
    w["steps"] = w.get("steps", 0) + 1
    for k, v in sums.items():
        w[k] = w[k] + v if k in w else v.clone()
    w["lr"] = lr


def window_to_floats(w: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in w.items()}


def window_metrics(w: dict[str, Any], **fields: Any) -> dict[str, Any] | None:
    """The metric line of a window (None if it saw no step): FVU of the window (sums, not a mean of
    ratios), mean L0 and loss terms, the last learning rate, plus `fields` (step, tokens, sae, ...)."""
    f = window_to_floats(w)
    if not f.get("steps"):
        return None
    m = {**fields, "fvu": f["sse"] / max(f["denom"], 1e-30), "l0": f["l0"] / f["steps"], "lr": f["lr"]}
    for k in sorted(f):
        if k not in _SPECIAL:
            m[k] = f[k] / f["steps"]
    return m


def append_metrics(run_dir: Path, lines: list[dict[str, Any]]) -> None:
    if lines:
        with open(Path(run_dir) / METRICS_FILE, "a") as fh:
            fh.write("\n".join(json.dumps(m, sort_keys=True) for m in lines) + "\n")


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metric lines a killed run wrote after its last checkpoint (they will be written again)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut off by the kill
    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())


def progress_postfix(m: dict[str, Any], num_saes: int) -> dict[str, Any]:
    """What the progress bar shows: the first SAE's latest FVU, L0 and dead share."""
    post: dict[str, Any] = {"fvu": f"{m['fvu']:.4f}", "L0": f"{m['l0']:.1f}", "dead": f"{m['dead_pct']:.1f}%"}
    if num_saes > 1:
        post["saes"] = num_saes
    return post


def sae_row(*, name: str, directory: Path, hook: str, architecture: str, k: int, num_features: int,
            dead_features: int, last_metrics: dict[str, Any], heldout: dict[str, Any]) -> dict[str, Any]:
    """One SAE's row of summary.json."""
    return {"name": name, "dir": str(directory), "hook": hook, "architecture": architecture, "k": k,
            "num_features": num_features, "dead_features": dead_features,
            "dead_pct": 100 * dead_features / num_features, "train_fvu": last_metrics.get("fvu"),
            "train_l0": last_metrics.get("l0"), **heldout}


def run_summary(*, out: Path, steps: int, tokens: int, elapsed: float, session_tokens: int, session_time: float,
                dead_tokens: int, device: str, world_size: int, matmul_dtype: str,
                rows: list[dict[str, Any]]) -> dict[str, Any]:
    """summary.json: the run's totals and throughput (overall, and of this process alone) and its SAEs' rows."""
    return {"out": str(out), "steps": steps, "tokens": tokens, "elapsed_s": elapsed,
            "tokens_per_s": tokens / max(elapsed, 1e-9),
            "session_tokens_per_s": session_tokens / max(session_time, 1e-9),
            "dead_tokens": dead_tokens, "device": device, "world_size": world_size,
            "matmul_dtype": matmul_dtype, "saes": rows}
