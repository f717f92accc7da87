"""`sae eval`: evaluate one or several SAEs; eval.json per SAE, a table, and a Pareto plot for several.

    sae eval --sae cache/saes/run1 --cache cache/acts            # every SAE of a run directory
    sae eval --sae dirA dirB --cache cache/acts --model none      # cache-only metrics
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from workbench.config import add_config_args, config_from_args
from workbench.errors import WorkbenchError


def register(sub: argparse._SubParsersAction) -> None:
    """Add this package's verbs to the root `sae` command."""
    from evals.evaluate import EvalConfig

    p = sub.add_parser(
        "eval", help="evaluate SAEs: reconstruction, spliced CE/KL, feature health, sparse probing",
        description="Evaluate SAEs on a cache's held-out tokens and, spliced into the model at their hook point, "
                    "on its held-out contexts. Writes eval.json into each SAE directory, prints a table and, for "
                    "several SAEs, a Pareto plot (FVU and CE loss score against L0).")
    p.add_argument("--sae", nargs="+", required=True, metavar="DIR",
                   help="SAE directories, or run directories holding several SAEs")
    p.add_argument("--plot", default="", help="Pareto plot path (default: pareto.png in the SAEs' common "
                                              "directory)")
    add_config_args(p, EvalConfig)
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from evals.evaluate import EvalConfig, evaluate
    from evals.loading import expand_sae_paths
    from evals.result import comparison_table

    cfg = config_from_args(EvalConfig, args)
    dirs = expand_sae_paths(args.sae)
    if not cfg.cache:
        raise WorkbenchError("--cache DIR is required (the activation cache the SAEs read: held-out tokens and contexts)")
    from harvesting import CacheReader
    from workbench.device import resolve_device
    from workbench.models import load_model

    reader = CacheReader(cfg.cache)
    lm = None
    if cfg.model != "none":
        name = cfg.model or (reader.manifest.get("config") or {}).get("model") or reader.model_id
        lm = load_model(name, device=resolve_device(cfg.device))
    results = []
    for d in dirs:
        r = evaluate(d, reader, lm if lm is not None else "none", config=cfg)
        r.save(d)
        results.append(r)
        if len(dirs) == 1:
            print(r, flush=True)
    from evals.pareto import pareto_plot

    if len(results) > 1:
        print(comparison_table(results))
    for d in dirs:
        print(f"eval.json: {d / 'eval.json'}")
    plot = Path(args.plot) if args.plot else Path(os.path.commonpath([str(d) for d in dirs])) / "pareto.png"
    print(f"Pareto plot: {pareto_plot(results, plot)}")
    return 0
