"""`sae sae export`: convert any SAE (or every SAE of a run) to SAELens, sparsify or our format.

    sae sae export cache/saes/run1 --to saelens --out exported/saelens    # one folder per SAE
    sae sae export cache/saes/run1 --to sparsify --out exported/sparsify  # exported/sparsify/layers.N/
    sae sae export hf://owner/repo/layers.10 --to workbench --out saes/imported

`add_export_verb(noun)` adds the verb under a noun's subparsers (plain argparse, so it fits any
root grammar); `add_load_args(parser)` gives other verbs that load foreign SAEs the same flags.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.errors import WorkbenchError, choices_error

TARGETS = ("saelens", "sparsify", "workbench")


def add_load_args(p: argparse.ArgumentParser) -> None:
    """Flags every verb that loads SAEs through saes.formats needs."""
    p.add_argument("--norm-scaling-factor", type=float, default=None, metavar="S",
                   help="for SAELens SAEs saved with normalize_activations=expected_average_only_in: the dataset's "
                        "norm scaling factor (SAELens keeps it outside the SAE files)")


def add_export_verb(noun: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from workbench.cli import add_verb

    p = add_verb(
        noun, "export", run_export, help="write SAEs in SAELens, sparsify or workbench format",
        description="Load every SAE at SRC (ours, SAELens, sparsify; a directory, a run directory or "
                    "hf://owner/repo[@revision][/folder]) and write it in another tool's format.",
    )
    p.add_argument("src", help="an SAE directory, a run directory, or hf://owner/repo[@revision][/folder]")
    p.add_argument("--to", required=True, metavar="FORMAT",
                   help=f"target format (choices: {', '.join(TARGETS)})")
    p.add_argument("--out", required=True, help="output directory (one subfolder per SAE when SRC holds several)")
    add_load_args(p)
    return p


def run_export(args: argparse.Namespace) -> int:
    from saes import save_sae
    from saes.formats import export_saelens, export_sparsify, find_any, hookpoint_from_hook
    from saes.formats.export_rules import saelens_rule, sparsify_rule

    if args.to not in TARGETS:
        raise choices_error("export format", args.to, TARGETS)
    found = find_any(args.src, norm_scaling_factor=args.norm_scaling_factor)
    out = Path(args.out)
    rule = {"saelens": saelens_rule, "sparsify": sparsify_rule}.get(args.to)
    for sae in found.values():  # refuse before writing anything
        if rule is not None:
            rule(sae)
    if args.to == "sparsify":  # sparsify runs hold one SAE per hookpoint folder
        points = [hookpoint_from_hook(s.cfg.hook) for s in found.values()]
        twice = sorted({p for p in points if points.count(p) > 1})
        if twice:
            raise WorkbenchError(f"{args.src} holds several SAEs at hookpoint(s) {twice}; a sparsify run keeps one "
                                 f"per hookpoint: export them one at a time into different --out folders")
    for name, sae in found.items():
        dest = out if name == "." else out / name
        if args.to == "saelens":
            written = export_saelens(sae, dest)
        elif args.to == "sparsify":
            written = export_sparsify(sae, out)
        else:
            written = save_sae(sae, dest)
        print(f"{name}: {sae.architecture} {sae.d_in}x{sae.num_features} at {sae.cfg.hook or '?'} -> {written}")
    return 0
