"""``llmsys demo``: the main job of each system on built-in defaults.

Each system contributes ``llmsys.<system>.demo.run_demo(out_dir) -> list[str]``; a system
whose demo module does not exist yet is reported as not there yet instead of failing.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import time
from pathlib import Path
from typing import Any

SYSTEMS = (
    ("model", "llmsys.core.demo", "the bundled SmolLM2 model answers a question"),
    ("tiermem", "llmsys.tiermem.demo", "tiered KV store (ITME)"),
    ("moe", "llmsys.moe.demo", "micro-step MoE load balancing (ForeMoE)"),
    ("aging", "llmsys.aging.demo", "software-aging campaign"),
)


def register(sub: Any) -> None:
    """Add ``demo`` to ``sub`` (an argparse subparsers object)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "demo",
        help="run the main job of each system on built-in defaults",
        description="Run a small version of each system's main job on built-in defaults and "
        "say plainly which parts do not exist yet.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("results/demo"),
        help="folder for the demo's files (default: %(default)s)",
    )
    parser.add_argument(
        "--only",
        choices=[name for name, _, _ in SYSTEMS],
        action="append",
        help="run only this part (repeatable)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    failures = 0
    for name, module_name, title in SYSTEMS:
        if args.only and name not in args.only:
            continue
        print(f"== {name}: {title}", flush=True)
        if importlib.util.find_spec(module_name) is None:
            print("   not there yet: this part has not been built", flush=True)
            continue
        module = importlib.import_module(module_name)
        out_dir = args.out / name
        out_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            lines = module.run_demo(out_dir)
        except Exception as exc:  # one part's failure must not hide the others
            failures += 1
            print(f"   FAILED: {type(exc).__name__}: {exc}", flush=True)
            continue
        for line in lines:
            print(f"   {line}", flush=True)
        print(f"   ({time.perf_counter() - started:.1f} s)", flush=True)
    return 1 if failures else 0
