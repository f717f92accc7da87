"""The root `sae` command finds every package's verbs through entry points."""

from __future__ import annotations

import subprocess
import sys

from workbench.cli import build_parser


def test_each_registered_verb_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    verbs = sorted(sub.choices)  # type: ignore[union-attr]
    assert verbs, "no verbs registered: are the entry points installed?"
    for verb in verbs:
        out = subprocess.run([sys.executable, "-m", "workbench.cli", verb, "--help"], capture_output=True, text=True)
        assert out.returncode == 0, (verb, out.stderr)
        assert "usage: sae" in out.stdout


def test_root_help_lists_verbs() -> None:
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    for verb in sub.choices:  # type: ignore[union-attr]
        assert verb in out.stdout
