"""What every worker does the same way: arguments, threads, the batches, memory, its result files.

A worker is `python train_<library>.py BATCHES_FILE OUT_DIR --threads N [--variant V]`, run by the
driver in the library's own venv. It trains on every batch of the file in order, timing only the
training loop (set-up and saving excluded), and writes OUT_DIR/weights.safetensors (common form,
see common_form) and OUT_DIR/result.json. torch + safetensors + the standard library only.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

import batches_file
import common_form

CHECK_ROWS = 512  # held-out rows on which the common form is compared with the library's own forward


def start(library: str, variants: tuple[str, ...] = ("default",)) -> tuple[argparse.Namespace, batches_file.Batches]:
    ap = argparse.ArgumentParser(description=f"train the {library} TopK SAE of the peer benchmark")
    ap.add_argument("batches", help="batches file written by benchmarks/peers/run.py")
    ap.add_argument("out", help="directory for weights.safetensors and result.json")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--variant", default=variants[0], choices=variants)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.t_import = time.perf_counter()
    data = batches_file.read(args.batches)
    args.rss_loaded_mib = rss_mib()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return args, data


def rss_mib() -> float:
    """Current resident set size (VmRSS), MiB."""
    return _status_kib("VmRSS") / 1024


def peak_rss_mib() -> tuple[float, float]:
    """(VmHWM, ru_maxrss) in MiB. VmHWM is this process's own peak; ru_maxrss may carry the
    parent's peak over fork+exec on Linux, so the table reports VmHWM and keeps both."""
    return _status_kib("VmHWM") / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_kib(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def finish(args: argparse.Namespace, data: batches_file.Batches, *, seconds: float, weights: dict[str, Tensor],
           library_recon: Tensor, version: str, recipe: str, extra: dict[str, Any] | None = None) -> None:
    """Save the common-form weights and the result; `library_recon` is the library's own x_hat of
    the first CHECK_ROWS held-out rows, compared here with the common form's."""
    weights = {k: weights[k].detach().float().contiguous().cpu() for k in common_form.KEYS}
    common_form.check_weights(weights)
    x = data.heldout[:CHECK_ROWS]
    diff = common_form.max_relative_diff(common_form.reconstruct(weights, x, int(data.params["k"])),
                                         library_recon.detach().float())
    hwm, maxrss = peak_rss_mib()
    out = Path(args.out)
    save_file(weights, str(out / "weights.safetensors"))
    result = {"seconds": seconds, "tokens": data.tokens, "steps": data.num_batches, "version": version,
              "recipe": recipe, "variant": args.variant, "threads": torch.get_num_threads(),
              "peak_rss_mib": hwm, "ru_maxrss_mib": maxrss, "rss_after_load_mib": args.rss_loaded_mib,
              "conversion_max_rel_diff": diff, "python": sys.version.split()[0], "torch": torch.__version__,
              **(extra or {})}
    (out / "result.json").write_text(json.dumps(result, indent=1))
