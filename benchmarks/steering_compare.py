"""SAE-feature steering vs DiffMean vs PCA of differences vs DiffMean through the SAE, on the same prompts.

Runs `steering.run_sweep` (same flags as `sae steer-sweep`) and prints the command, the machine,
the selection rule, each concept's judge probe (fitted on texts no method reads, with its
leave-one-out accuracy) and the held-out table (each method at the coefficient chosen on the other
half of the prompts).
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
    budget = "no KL budget" if cfg.max_kl is None else f"KL <= {cfg.max_kl:g} nats/token"
    print(f"hook mean norm {summary['mean_norm']:.3g}; coefficients in units of it; chosen by {cfg.select_by} on "
          f"even prompts with {budget}, perplexity <= {cfg.max_ppl_ratio:g}x, distinct-2 >= "
          f"{cfg.min_distinct_ratio:g}x and zlib compression ratio <= {cfg.max_compression_ratio:g}x unsteered; "
          f"reported on odd prompts; KL on {len(summary['neutral_texts'])} neutral texts (none a concept's own), "
          f"positions {cfg.positions}")
    for name, c in summary["concepts"].items():
        cos = ", ".join(f"{m} {v:.2f}" for m, v in c["cos_to_diffmean"].items() if m != "diffmean")
        p = c["probe"]
        judge = (f"probe: {p['kind']} on {p['n_positive']}+{p['n_negative']} judge texts no method reads, "
                 f"leave-one-out accuracy {p['loo_accuracy']:.2f}, cosine to DiffMean {p['cos_to_diffmean']:.2f}"
                 if "n_positive" in p else f"probe: {p['kind']}")
        print(f"{name}: SAE feature {c['feature']} (activation rise {c['feature_rise']:.3g}); cosine to DiffMean: {cos}; "
              f"{judge}")
    print("sae_feature = the sae method's own feature re-read on the text (favours sae: not a judge)")
    print(format_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
