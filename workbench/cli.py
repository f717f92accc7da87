"""The `sae` command: one root, nouns and verbs contributed by each package through entry points.

A package declares `[project.entry-points."sae.verbs"] name = "pkg.cli:register"`; its
`register(sub)` adds to the root with `add_verb` (a single action: `sae train`) and `add_noun`
(a thing with several actions: `sae cache info|verify`, `sae sae info`). Going through these two
helpers is what keeps the grammar and the help pages alike whichever package wrote them: every
parser is a `Parser` (one-line errors, exit 2) printing with the same `HelpFormatter`, every
verb records the function it runs, and help lines are short lower-case phrases without a full stop.
Old spellings stay as hidden verbs (`hidden=True`): they parse, but no help page lists them.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, NoReturn

from workbench.errors import WorkbenchError, choices_error

Verb = Callable[[argparse.Namespace], "int | None"]


class HelpFormatter(argparse.HelpFormatter):
    """The one look of every `sae` help page.

    Descriptions are wrapped line by line, so a line break starts a new paragraph and an indented
    line (an example command) is printed as written.
    """

    def __init__(self, prog: str, **kwargs: Any) -> None:
        kwargs.setdefault("max_help_position", 30)
        super().__init__(prog, **kwargs)

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):  # argparse measures verbs one indent short
            for sub in action._get_subactions():
                width = len(self._format_action_invocation(sub)) + self._current_indent + 4
                self._action_max_length = max(self._action_max_length, width)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(
            indent + line if line[:1].isspace() or not line
            else textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
            for line in text.splitlines()
        )


def _visible_names(action: argparse._SubParsersAction) -> list[str]:
    return [a.dest for a in action._choices_actions if a.help is not argparse.SUPPRESS]


class Parser(argparse.ArgumentParser):
    """An argparse parser whose mistakes are one line (`sae train: error: ...`) and exit 2.

    The usage block argparse prints before an error would bury the one thing the user must read;
    `--help` is one word away. Unknown verbs list only the verbs help shows, not hidden aliases.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if isinstance(action, argparse._SubParsersAction) and value not in action.choices:
            what = "verb" if action.metavar == "VERB" else "action"
            raise argparse.ArgumentError(None, str(choices_error(what, value, _visible_names(action))))
        super()._check_value(action, value)


def _subparsers(parser: argparse.ArgumentParser, metavar: str) -> argparse._SubParsersAction:
    return parser.add_subparsers(dest=metavar.lower(), metavar=metavar, parser_class=Parser)


def add_verb(sub: argparse._SubParsersAction, name: str, func: Verb, *, help: str,
             description: str | None = None, hidden: bool = False) -> argparse.ArgumentParser:
    """Add `sae [noun] name`, running `func(args)`; returns its parser for the caller's arguments.

    `hidden=True` keeps an old spelling working without listing it anywhere.
    """
    kwargs: dict[str, Any] = {"description": description or _sentence(help)}
    if not hidden:
        kwargs["help"] = help
    p = sub.add_parser(name, **kwargs)
    p.set_defaults(func=func, command=p.prog)
    return p


def add_noun(sub: argparse._SubParsersAction, name: str, *, help: str,
             description: str | None = None) -> argparse._SubParsersAction:
    """Add (or find, if another package added it first) `sae name ACTION`; returns where its verbs go.

    Several packages may hang verbs on one noun: each calls `add_noun` with the same name.
    """
    existing = sub.choices.get(name)
    if existing is not None:
        return next(a for a in existing._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.add_parser(name, help=help, description=description or _sentence(help))
    actions = _subparsers(p, "ACTION")

    def missing_action(args: argparse.Namespace) -> int:
        raise WorkbenchError(f"missing ACTION; valid choices: {', '.join(_visible_names(actions))}")

    p.set_defaults(func=missing_action, command=p.prog)
    return actions


def _sentence(phrase: str) -> str:
    return phrase[:1].upper() + phrase[1:] + "."


def build_parser(registrars: "list[Callable[[argparse._SubParsersAction], None]] | None" = None) -> Parser:
    """The root parser with every package's verbs (`registrars`: the `sae.verbs` entry points by default)."""
    if registrars is None:
        registrars = [ep.load() for ep in sorted(entry_points(group="sae.verbs"), key=lambda e: e.name)]
    parser = Parser(
        prog="sae",
        description="Sparse-autoencoder workbench: harvest activations, train SAEs, evaluate, inspect, steer.\n"
                    "Run `sae VERB --help` for a verb's flags.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = _subparsers(parser, "VERB")
    for register in registrars:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    for a in argv:
        if a == "--":
            break
        if a.startswith("--") and a.endswith("=--"):  # argparse turns this value into [], whatever the flag's type
            print(f"sae: error: {a[:-3]} got '--' as its value; give the value itself", file=sys.stderr)
            return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a one-line usage error (2): a code, never a traceback
        return e.code if isinstance(e.code, int) else 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    command = getattr(args, "command", f"sae {args.verb}")
    try:
        return int(func(args) or 0)
    except WorkbenchError as e:
        print(f"{command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
