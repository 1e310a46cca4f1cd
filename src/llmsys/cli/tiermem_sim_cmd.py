"""``llmsys tiermem simulate``: replay a trace through the real store with profile time."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from llmsys.cli.tiermem_serve_cmd import comma_ints
from llmsys.core.errors import ConfigError, InputError


def add_simulate(children: Any) -> None:
    """Register ``simulate`` under ``llmsys tiermem``."""
    from llmsys.tiermem.sim import profile_names

    p: argparse.ArgumentParser = children.add_parser(
        "simulate",
        help="simulate the five-configuration serving comparison on a trace (labelled simulated)",
        description="Replay a Mooncake-format trace through the real tiered store (metadata "
        "only), its eviction policies and the foresight planner, with time taken from a "
        "hardware profile: recompute, cpu-offload, dram-ssd, itme, unbounded at each ratio. "
        "Every figure printed is simulated.",
    )
    p.add_argument("--trace", type=Path, required=True, help="Mooncake-format JSONL trace")
    p.add_argument(
        "--profile",
        required=True,
        help=f"profile name ({', '.join(profile_names())}) or a .toml file",
    )
    p.add_argument(
        "--ratios",
        type=comma_ints,
        default=(1, 2, 4, 8),
        help="footprint / dram ratios, comma-separated (default: 1,2,4,8)",
    )
    p.add_argument(
        "--configs",
        default="recompute,cpu-offload,dram-ssd,itme,unbounded",
        help="configurations, comma-separated (default: all five)",
    )
    p.add_argument("--requests", type=int, help="trace requests to keep after --skip")
    p.add_argument("--skip", type=int, default=0, help="leading trace requests to drop")
    p.add_argument(
        "--lookahead",
        type=int,
        default=2,
        help="requests of foresight look-ahead, the prefetch depth (default: %(default)s)",
    )
    p.add_argument(
        "--cxl-factor",
        type=float,
        default=2.0,
        help="itme's cxl capacity as a multiple of dram; 0: no cxl (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    p.set_defaults(handler=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from llmsys.tiermem.serving.compare import parse_configs
    from llmsys.tiermem.sim import ReplayOptions, load_profile, requests_from_trace, simulate

    try:
        configs = tuple(parse_configs(args.configs))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if any(r < 1 for r in args.ratios):
        raise InputError("--ratios must be >= 1")
    profile = load_profile(args.profile)
    requests = requests_from_trace(args.trace, profile, requests=args.requests, skip=args.skip)
    options = ReplayOptions(lookahead=args.lookahead, cxl_factor=args.cxl_factor)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(f"simulating {label}", total=total)
            if done % 50 == 0 or done == total:
                bar.update(tasks[label], completed=done)

        comparison = simulate(
            requests,
            profile,
            configs=configs,
            ratios=args.ratios,
            options=options,
            progress=progress,
        )
    headline = 4 if 4 in args.ratios else max(args.ratios)
    summary = comparison.summary(headline)
    summary["trace"] = str(args.trace)
    print_sim_table(summary)
    if args.json:
        print(json.dumps(summary))
    return 0


def print_sim_table(summary: dict[str, Any]) -> None:
    """Print a simulated comparison as a table on stdout, labelled simulated."""
    from llmsys.cli.tiermem_serve_cmd import print_comparison_table

    print_comparison_table(
        summary,
        f"SIMULATED tiermem serving - profile {summary['profile']}, {summary['requests']} "
        f"requests, footprint {summary['footprint_bytes'] / 2**30:.1f} GiB",
        prefix="sim ",
    )
    for ratio, value in summary["speedup_itme_vs_cpu_offload_by_ratio"].items():
        cap = summary["speedup_unbounded_vs_cpu_offload_by_ratio"].get(ratio)
        gain = f"{(value - 1) * 100:+.1f}%" if value else "-"
        ceiling = f"{(cap - 1) * 100:+.1f}%" if cap else "-"
        print(
            f"simulated ratio {ratio}: itme vs cpu-offload {gain} "
            f"(paper: +35.7%; unbounded cap {ceiling})"
        )
    if "calibration_error_max" in summary:
        print(f"calibration_error_max (held-out ratios)  {summary['calibration_error_max']:.3f}")
