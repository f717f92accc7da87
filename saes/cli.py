"""`sae train` and related verbs."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this package's verbs to the root `sae` command."""
