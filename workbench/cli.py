"""The `sae` command: one root, verbs contributed by each package through entry points.

A package declares `[project.entry-points."sae.verbs"] name = "pkg.cli:register"` and its
`register(subparsers)` adds its verbs, each with a `func(args) -> int | None` default.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points

from workbench.errors import WorkbenchError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae",
        description="Sparse-autoencoder workbench: harvest activations, train SAEs, evaluate, inspect, steer.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for ep in sorted(entry_points(group="sae.verbs"), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0 if args.verb is None else 2
    try:
        return int(func(args) or 0)
    except WorkbenchError as e:
        print(f"sae {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sae {args.verb}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
