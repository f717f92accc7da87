"""SAE-feature steering vs DiffMean vs PCA of differences vs DiffMean through the SAE, on the same prompts.

Runs `steering.run_sweep` (same flags as `sae steer-sweep`) and prints the command, the machine
and the held-out table (each method at the coefficient chosen on the other half of the prompts).
The run directory keeps config.json, rows.jsonl (every generation), summary.json and plot.png.

    python benchmarks/steering_compare.py --sae cache/quickstart/saes \
        --concepts ocean food music space sports --coeffs 0 0.15 0.3 0.6 --prompts 8 --max-new-tokens 16 \
        --neutral 6 --out cache/steer/compare
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import sys
import time

import torch

from steering import SweepConfig, run_sweep
from steering.sweep import format_table
from workbench.config import add_config_args, config_from_args


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser, SweepConfig)
    cfg = config_from_args(SweepConfig, parser.parse_args())
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.time()
    summary = run_sweep(cfg)
    wall = time.time() - start
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"device {cfg.device}; wall {wall:.0f} s")
    print(f"hook mean norm {summary['mean_norm']:.3g}; coefficients in units of it; chosen by {cfg.select_by} on "
          f"even prompts with perplexity <= {cfg.max_ppl_ratio:g}x unsteered; reported on odd prompts")
    for name, c in summary["concepts"].items():
        cos = ", ".join(f"{m} {v:.2f}" for m, v in c["cos_to_diffmean"].items() if m != "diffmean")
        print(f"{name}: SAE feature {c['feature']} (activation rise {c['feature_rise']:.3g}); cosine to DiffMean: {cos}")
    print(format_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
