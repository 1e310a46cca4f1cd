"""``llmsys moe ...`` subcommands."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the ``moe`` subcommand and its children to ``sub`` (an argparse subparsers object)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "moe", help="moe commands", description="moe commands"
    )
    children = parser.add_subparsers(dest="moe_command", metavar="COMMAND")
    children.required = True
    _ = children
