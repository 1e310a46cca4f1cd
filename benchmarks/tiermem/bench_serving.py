"""Serving benchmark: ITME vs CPU offloading (and the other configurations) on the real model.

CI-sized by default (a few minutes on two cores); ``--full`` runs the larger size. Prints a
table, then one JSON line with the serving issue's keys::

    python benchmarks/tiermem/bench_serving.py [--full] [--workload chat|docs|trace] ...
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from llmsys.cli.tiermem_serve_cmd import print_table
from llmsys.tiermem.serving import ServingBenchOptions, Workload, run_serving_bench
from llmsys.tiermem.serving.compare import CacheConfig, parse_configs

TRACE = Path(__file__).resolve().parents[3] / "shared" / "data" / "mooncake_synthetic_trace.jsonl"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="larger footprint, all ratios")
    parser.add_argument("--workload", choices=["chat", "docs", "trace"], default="chat")
    parser.add_argument("--trace", type=Path, default=TRACE)
    # Trace window: the shipped trace's reuse is long-range. Within a window, the ideal
    # prefix-block hit rate of 100 requests is 4% from request 0, 0% from 1000 and 20% from
    # 2500 (counted from the trace's hash_ids), so the default window starts at 2500.
    parser.add_argument("--requests", type=int, default=100, help="trace window length")
    parser.add_argument("--skip", type=int, default=2500, help="trace window start")
    parser.add_argument("--ratios", default=None, help="comma-separated ratios")
    parser.add_argument(
        "--serve-repeats", type=int, default=3, help="interleaved repetitions (medians)"
    )
    parser.add_argument(
        "--configs",
        default=",".join(c.value for c in CacheConfig),
        help="comma-separated configurations (recompute is the correctness reference)",
    )
    parser.add_argument(
        "--miss-requests",
        type=int,
        default=4,
        help="no-reuse requests (256 prompt tokens each) for miss_path_overhead; 0 skips it",
    )
    parser.add_argument(
        "--miss-repeats",
        type=int,
        default=None,
        help="interleaved recompute/itme repeats of the miss workload (default 3; 5 with --full)",
    )
    parser.add_argument(
        "--miss-only",
        action="store_true",
        help="measure only miss_path_overhead (no configuration comparison)",
    )
    args = parser.parse_args(argv)
    ratios = (
        tuple(int(x) for x in args.ratios.split(","))
        if args.ratios
        else ((1, 2, 4, 8) if args.full else (4,))
    )
    options = ServingBenchOptions(
        workload=Workload(args.workload),
        trace=args.trace if args.workload == "trace" else None,
        requests=args.requests,
        skip=args.skip,
        footprint_mib=400.0 if args.full else 120.0,
        ratios=ratios,
        miss_requests=args.miss_requests,
        repeats=args.miss_repeats or (5 if args.full else 3),
        serve_repeats=args.serve_repeats,
        configs=() if args.miss_only else tuple(parse_configs(args.configs)),
    )

    def progress(label: str, done: int, total: int) -> None:
        if done == total:
            print(f"  {label}: {total} requests served", file=sys.stderr, flush=True)

    summary = run_serving_bench(options, progress)
    print_table(summary)
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
