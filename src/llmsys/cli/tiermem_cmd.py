"""``llmsys tiermem ...`` subcommands."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the ``tiermem`` subcommand and its children to ``sub`` (an argparse subparsers object)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "tiermem", help="tiermem commands", description="tiermem commands"
    )
    children = parser.add_subparsers(dest="tiermem_command", metavar="COMMAND")
    children.required = True
    _ = children
