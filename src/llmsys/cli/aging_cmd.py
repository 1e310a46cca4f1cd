"""``llmsys aging ...`` subcommands."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the ``aging`` subcommand and its children to ``sub`` (an argparse subparsers object)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "aging", help="aging commands", description="aging commands"
    )
    children = parser.add_subparsers(dest="aging_command", metavar="COMMAND")
    children.required = True
    _ = children
