"""The ``llmsys`` command line: one entry point, one subcommand per system.

Each system's commands live in their own module (``tiermem_cmd``, ``moe_cmd``,
``aging_cmd``) exposing ``register(subparsers)``; the CLI only parses arguments and calls
the public API. Exit status: 0 ok, 1 failure, 2 usage or invalid input.
"""

from llmsys.cli.main import main

__all__ = ["main"]
