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
    from saes.formats.cli import add_load_args
    from workbench.cli import add_verb

    p = add_verb(
        sub, "eval", run_eval, help="evaluate SAEs: reconstruction, spliced CE/KL, feature health, sparse probing",
        description="Evaluate SAEs (ours, SAELens, sparsify; directories, run directories or hf://owner/repo/folder) on "
                    "a cache's held-out tokens and, spliced into the model at their hook point, on its held-out "
                    "contexts.\nWrites eval.json per SAE, prints a table and a Pareto plot (FVU and CE loss score "
                    "against L0).\n"
                    "  sae eval --sae cache/saes/run1 --cache cache/acts")
    p.add_argument("--sae", nargs="+", required=True, metavar="DIR",
                   help="SAE directories, run directories holding several, or hf://owner/repo/folder")
    p.add_argument("--out", default="", help="write each eval.json under OUT/<sae name>/ instead of into the SAE's "
                                             "own directory (default for hub SAEs: cache/evals)")
    p.add_argument("--plot", default="", help="Pareto plot path (default: pareto.png in the SAEs' common directory, "
                                              "or in --out)")
    add_config_args(p, EvalConfig)
    from evals.supervised.run import SupervisedConfig

    add_config_args(p, SupervisedConfig)  # --task ioi: the supervised evaluation instead of the cache metrics
    add_load_args(p)


def run_eval(args: argparse.Namespace) -> int:
    from evals.evaluate import EvalConfig, evaluate_many
    from evals.loading import expand_sae_paths, load_for_eval
    from evals.result import comparison_table

    cfg = config_from_args(EvalConfig, args)
    if getattr(args, "task", ""):
        from evals.supervised.cli_task import run_task_eval

        return run_task_eval(args, cfg)
    saes = expand_sae_paths(args.sae)
    if not cfg.cache:
        raise WorkbenchError("--cache DIR is required (the activation cache the SAEs read: held-out tokens and contexts)")
    from harvesting import CacheReader
    from workbench.device import resolve_device
    from workbench.models import load_model

    reader = CacheReader(cfg.cache)
    device = resolve_device(cfg.device)
    lm = None
    if cfg.model != "none":
        name = cfg.model or (reader.manifest.get("config") or {}).get("model") or reader.model_id
        lm = load_model(name, device=device)
    loaded = [load_for_eval(ref.dir, device=device, norm_scaling_factor=args.norm_scaling_factor) for ref in saes]
    # One call for all: the SAEs at one hook share the spliced loss's clean, zero and mean passes.
    results = evaluate_many(loaded, reader, lm if lm is not None else "none", config=cfg)
    written = []
    for ref, r in zip(saes, results):
        r.sae.update(name=ref.name, dir=str(ref.dir))
        if args.out or ref.hub:  # never into the hub's download cache
            target = Path(args.out or "cache/evals") / ref.name
        else:
            target = ref.dir
        written.append(r.save(target))
        if len(saes) == 1:
            print(r, flush=True)
    from evals.pareto import pareto_plot

    if len(results) > 1:
        print(comparison_table(results))
    for path in written:
        print(f"eval.json: {path}")
    plot = Path(args.plot) if args.plot else Path(os.path.commonpath([str(p.parent) for p in written])) / "pareto.png"
    print(f"Pareto plot: {pareto_plot(results, plot)}")
    return 0

