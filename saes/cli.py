"""`sae train` and `sae sae info` (`sae sae-info`, the old spelling, still works).

    sae train --cache cache/smollm2-wiki-1m --hooks blocks.8.hook_resid_post --arch topk --k 32 --expansion 8
    sae train --model smollm2-135m --corpus debian-text --tokens 10000000 --hooks blocks.8.hook_resid_post ...
                                         # no cache: the forward passes feed the SAEs through a shuffle buffer
    torchrun --nproc-per-node 4 -m workbench.cli train ...      # data parallel over 4 GPUs / processes
    torchrun --nproc-per-node 8 -m workbench.cli train ... --feature-parallel 4
                                         # 2 data-parallel replicas x 4 ranks holding F/4 features each (TopK)
    sae sae info cache/saes/smollm2-wiki-1m                      # what a run or SAE directory holds

Every flag of `sae train` is a field of `saes.TrainConfig`; several values for --hooks, --arch,
--k or --expansion train every combination in one pass over the cache.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from saes.config import TrainConfig
from workbench.cli import add_noun, add_verb
from workbench.config import add_config_args, config_from_args
from workbench.errors import WorkbenchError


def register(sub: argparse._SubParsersAction) -> None:
    """Add this package's verbs to the root `sae` command."""
    p = add_verb(
        sub, "train", run_train, help="train sparse autoencoders on an activation cache (or straight from a model)",
        description="Train one or more SAEs (every combination of --hooks x --arch x --k x --expansion) in one "
                    "pass over an activation cache, or (--model, --corpus, --tokens) straight from the model's "
                    "forward passes through a seeded shuffle buffer, no cache written.\nRe-running the same command "
                    "resumes from the last checkpoint.",
    )
    add_config_args(p, TrainConfig)
    saes = add_noun(sub, "sae", help="describe saved SAEs")
    for where, name, hidden in ((saes, "info", False), (sub, "sae-info", True)):  # sae-info: the old spelling
        q = add_verb(where, name, run_info, help="describe a saved SAE or a training run directory", hidden=hidden,
                     description="Print the configuration and final metrics of a saved SAE or a run directory.")
        q.add_argument("path", help="an SAE directory (cfg.json) or a run directory (summary.json)")
        q.add_argument("--json", action="store_true", help="print JSON instead of text")
    from saes.formats.cli import add_export_verb

    add_export_verb(saes)


def summary_line(row: dict[str, Any], run: dict[str, Any]) -> str:
    """One line per SAE: what the quickstart and a researcher glance at first."""
    fvu = row.get("heldout_fvu")
    l0 = row.get("heldout_l0")
    where = "held-out"
    if fvu is None:  # no held-out split: fall back to the last training window
        fvu, l0, where = row.get("train_fvu"), row.get("train_l0"), "train"
    fvu_s = "n/a" if fvu is None else f"{fvu:.4f}"
    l0_s = "n/a" if l0 is None else f"{l0:.1f}"
    return (
        f"{row['name']}: {where} FVU {fvu_s}, L0 {l0_s}, dead {row['dead_pct']:.2f}% "
        f"({row['dead_features']}/{row['num_features']} features) | {run['tokens']:,} tokens, "
        f"{run['tokens_per_s']:,.0f} tokens/s -> {row['dir']}"
    )


def run_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(TrainConfig, args)
    if not cfg.cache and not cfg.model:
        raise WorkbenchError("--cache DIR is required (an activation cache written by `sae harvest`), "
                             "or --model M to train from a model's forward passes")
    from saes.trainer import train

    summary = train(cfg)
    for row in summary.get("saes", []):
        print(summary_line(row, summary), flush=True)
    return 0


def run_info(args: argparse.Namespace) -> int:
    p = Path(args.path)
    if not p.exists():
        raise WorkbenchError(f"{str(p)!r} does not exist")
    if (p / "summary.json").is_file():
        data = json.loads((p / "summary.json").read_text())
        if args.json:
            print(json.dumps(data, indent=2, sort_keys=True))
        else:
            for row in data["saes"]:
                print(summary_line(row, data))
        return 0
    from saes.storage import find_sae_dirs, load_stats

    dirs = find_sae_dirs(p)
    if not dirs:
        raise WorkbenchError(f"{str(p)!r} holds neither an SAE (cfg.json) nor a run (summary.json)")
    out = []
    for d in dirs:
        cfg = json.loads((d / "cfg.json").read_text())
        stats = load_stats(d)
        row = {k: cfg.get(k) for k in ("architecture", "hook", "model_id", "d_in", "num_features", "k", "input_scale")}
        row["dir"] = str(d)
        if "firing_counts" in stats:
            row["never_fired_features"] = int((stats["firing_counts"] == 0).sum())
            row["tokens"] = int(stats["tokens"][0]) if "tokens" in stats else None
        out.append(row)
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        for row in out:
            print(", ".join(f"{k}={v}" for k, v in row.items()))
    return 0
