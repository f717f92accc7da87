"""`sae harvest`, `sae cache info|verify|convert` and `sae hooks`."""

from __future__ import annotations

import argparse
import json

from workbench.cli import add_noun, add_verb
from workbench.config import add_config_args, config_from_args
from workbench.errors import WorkbenchError


def register(sub: argparse._SubParsersAction) -> None:
    """Add this package's verbs to the root `sae` command."""
    from harvesting.harvest import HarvestConfig

    p = add_verb(sub, "harvest", _harvest, help="capture activations of a model over a corpus into an on-disk cache",
                 description="Run a model over a corpus and store the activations at the given hook points "
                 "(one forward pass, stopped after the deepest hooked block).\nRun the same command again "
                 "to resume an interrupted harvest.\nUnder torchrun each process runs its share of the shards "
                 "and the result is the one cache a single process writes:\n"
                 "  torchrun --nproc-per-node 4 -m workbench.cli harvest ...")
    add_config_args(p, HarvestConfig)

    cache = add_noun(sub, "cache", help="inspect or check an activation cache")
    info = add_verb(cache, "info", _info, help="summary: model, hooks, tokens, size on disk, norms")
    info.add_argument("path", help="cache directory")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ver = add_verb(cache, "verify", _verify, help="check every shard's checksum, shape and dtype; names any bad shard")
    ver.add_argument("path", help="cache directory")
    conv = add_verb(cache, "convert", _convert, help="write a cache again with its activations in another dtype",
                    description="Write the complete cache --cache again at --out with its activations stored as --dtype: "
                    "bfloat16 or float16 halve the disk and every epoch's reads, and the result is byte for byte the "
                    "cache `sae harvest --dtype` writes from the same config (float16 refuses values beyond 65504).\n"
                    "Run the same command again to resume an interrupted conversion.")
    conv.add_argument("--cache", required=True, help="the cache to convert")
    conv.add_argument("--dtype", required=True, metavar="DTYPE", help="bfloat16, float16 or float32")
    conv.add_argument("--out", required=True, help="the new cache directory")
    conv.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")

    h = add_verb(sub, "hooks", _hooks, help="list a model's hook points")
    h.add_argument("model", help="offline alias, hub id, local directory or .gguf file")
    h.add_argument("--filter", default="", help="only names containing this text")


def _harvest(args: argparse.Namespace) -> int:
    from harvesting.harvest import HarvestConfig, harvest
    from harvesting.inspect_cache import cache_summary, format_summary
    from workbench.distributed import is_main_process

    cfg = config_from_args(HarvestConfig, args)
    main = is_main_process()  # asked before harvest() leaves the process group
    out = harvest(cfg)
    if main:
        print(format_summary(cache_summary(out)))
    return 0


def _info(args: argparse.Namespace) -> int:
    from harvesting.inspect_cache import cache_summary, format_summary

    s = cache_summary(args.path)
    print(json.dumps(s, indent=2) if args.json else format_summary(s))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from harvesting.inspect_cache import verify_cache

    rep = verify_cache(args.path)
    if rep.ok:
        print(f"{args.path}: OK ({rep.files_checked} files: checksums, shapes and dtypes match the manifest)")
        return 0
    for p in rep.problems:
        print(f"{args.path}: {p}")
    print(f"{args.path}: {len(rep.problems)} problem(s) in {rep.files_checked} files")
    return 1


def _convert(args: argparse.Namespace) -> int:
    from harvesting.cache import dtype_from_name
    from harvesting.convert import convert_cache
    from harvesting.inspect_cache import cache_summary, format_summary

    dtype_from_name(args.dtype)  # a bad --dtype is named with the choices before anything is read
    out = convert_cache(args.cache, args.out, args.dtype, progress=args.progress)
    print(format_summary(cache_summary(out)))
    return 0


def _hooks(args: argparse.Namespace) -> int:
    from workbench.models import load_model

    if not args.model:
        raise WorkbenchError("give a model")
    lm = load_model(args.model)
    for name in lm.hook_names():
        if args.filter in name:
            print(name)
    return 0
