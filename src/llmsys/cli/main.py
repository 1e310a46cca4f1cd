"""Entry point of the ``llmsys`` command: builds the parser and maps errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from llmsys import __version__
from llmsys.cli import aging_cmd, demo_cmd, doctor_cmd, moe_cmd, tiermem_cmd
from llmsys.core.errors import ConfigError, InputError, LlmsysError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """Return the full ``llmsys`` parser with every system's subcommands registered."""
    parser = argparse.ArgumentParser(
        prog="llmsys",
        description=(
            "llmsys - tiered KV memory for inference (tiermem), micro-step MoE load "
            "balancing for RL post-training (moe), and software-aging campaigns for LLM "
            "serving (aging)."
        ),
        epilog="Run 'llmsys SUBCOMMAND --help' for each subcommand's options.",
    )
    parser.add_argument("--version", action="version", version=f"llmsys {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    sub.required = True
    tiermem_cmd.register(sub)
    moe_cmd.register(sub)
    aging_cmd.register(sub)
    demo_cmd.register(sub)
    doctor_cmd.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit status (0 ok, 1 failure, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(handler(args))
    except (InputError, ConfigError) as exc:
        print(f"llmsys: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LlmsysError as exc:
        print(f"llmsys: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("llmsys: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
