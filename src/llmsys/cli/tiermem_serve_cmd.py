"""``llmsys tiermem bench``: serve one workload under the five cache configurations."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from llmsys.core.errors import ConfigError


def comma_ints(text: str) -> tuple[int, ...]:
    """argparse type: ``"1,2,4"`` -> ``(1, 2, 4)``; raises ArgumentTypeError otherwise."""
    try:
        values = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def add_bench(children: Any) -> None:
    """Register ``bench`` under ``llmsys tiermem``."""
    p: argparse.ArgumentParser = children.add_parser(
        "bench",
        help="serve the bundled model under recompute / cpu-offload / dram-ssd / itme / "
        "unbounded and compare",
        description="Serve the same requests, closed loop, with no cache (recompute), DRAM-only "
        "CPU offloading (dram = footprint / ratio, LRU), DRAM + SSD (LMCache-like), ITME (DRAM + "
        "CXL of 2 x DRAM + SSD with foresight prefetch) and unbounded DRAM; print throughput, "
        "TTFT, hit rates by tier, and correctness against recompute.",
    )
    p.add_argument(
        "--workload",
        choices=["chat", "docs", "trace"],
        default="chat",
        help="request source (default: %(default)s)",
    )
    p.add_argument("--trace", type=Path, help="Mooncake-format JSONL trace (with --workload trace)")
    p.add_argument("--requests", type=int, help="trace requests to keep after --skip")
    p.add_argument("--skip", type=int, default=0, help="leading trace requests to drop")
    p.add_argument(
        "--tokens-per-hash",
        type=int,
        default=8,
        help="tokens each 512-token trace hash block becomes (default: %(default)s)",
    )
    p.add_argument(
        "--block-tokens", type=int, default=16, help="tokens per KV block (default: %(default)s)"
    )
    p.add_argument(
        "--prefill-chunk-blocks",
        type=int,
        default=4,
        help="blocks per prefill forward pass; hits are used in whole chunks so cached and "
        "recomputed logits stay bitwise identical (default: %(default)s)",
    )
    p.add_argument(
        "--footprint-mib",
        type=float,
        default=48.0,
        help="target KV footprint of generated workloads (default: %(default)s)",
    )
    p.add_argument(
        "--ratios",
        type=comma_ints,
        default=(1, 2, 4, 8),
        help="footprint / dram ratios, comma-separated (default: 1,2,4,8)",
    )
    p.add_argument(
        "--configs",
        default=",".join(["recompute", "cpu-offload", "dram-ssd", "itme", "unbounded"]),
        help="configurations to run, comma-separated (default: all five)",
    )
    p.add_argument(
        "--lookahead",
        type=int,
        default=1,
        help="requests of foresight look-ahead; each one is prefetched into dram, so it must "
        "fit there beside the running one (default: %(default)s)",
    )
    p.add_argument(
        "--miss-requests",
        type=int,
        default=4,
        help="no-reuse requests for the miss-path overhead; 0 skips (default: 4)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="interleaved repetitions of every configuration; throughput is their median "
        "(default: %(default)s)",
    )
    p.add_argument("--work-dir", type=Path, help="where SSD tiers keep their files")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    p.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from llmsys.tiermem.serving import ServingBenchOptions, Workload, run_serving_bench
    from llmsys.tiermem.serving.compare import parse_configs

    try:
        configs = tuple(parse_configs(args.configs))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    options = ServingBenchOptions(
        workload=Workload(args.workload),
        trace=args.trace,
        requests=args.requests,
        skip=args.skip,
        tokens_per_hash=args.tokens_per_hash,
        block_tokens=args.block_tokens,
        prefill_chunk_blocks=args.prefill_chunk_blocks,
        footprint_mib=args.footprint_mib,
        ratios=args.ratios,
        configs=configs,
        lookahead=args.lookahead,
        miss_requests=args.miss_requests,
        work_dir=args.work_dir,
        serve_repeats=args.repeats,
    )
    console = Console(stderr=True)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done)

        summary = run_serving_bench(options, progress)
    print_table(summary)
    if args.json:
        print(json.dumps(summary, default=str))
    return 0


def print_comparison_table(summary: dict[str, Any], title: str, prefix: str = "") -> None:
    """Print a five-configuration comparison (real or simulated) as a table on stdout.

    ``prefix`` labels the timing columns (``"sim "`` for simulated figures).
    """
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in (
        "config",
        "ratio",
        f"{prefix}req/s",
        f"{prefix}TTFT p50 s",
        f"{prefix}TTFT p99 s",
        "hits by tier",
    ):
        table.add_column(col)
    for cfg, by_ratio in summary["throughput_rps"].items():
        for ratio, thr in by_ratio.items():
            hits = summary["hit_rate_by_tier"].get(cfg, {}).get(ratio, {})
            table.add_row(
                cfg,
                ratio,
                f"{thr:.3f}",
                f"{summary['ttft_p50_s'][cfg][ratio]:.3f}",
                f"{summary['ttft_p99_s'][cfg][ratio]:.3f}",
                " ".join(f"{k}:{v:.0%}" for k, v in hits.items()) or "-",
            )
    Console().print(table)


def print_table(summary: dict[str, Any]) -> None:
    """Print the measured comparison as a table on stdout, then its headline keys."""
    print_comparison_table(
        summary,
        f"tiermem serving - {summary['workload']}, {summary['requests']} requests, "
        f"footprint {summary['footprint_bytes'] / 2**20:.1f} MiB",
    )
    for key in (
        "speedup_itme_vs_cpu_offload",
        "speedup_unbounded_vs_cpu_offload",
        "itme_share_of_cap",
        "prefetch_timely_fraction",
        "redundant_read_ratio",
        "miss_path_overhead",
        "mismatched_outputs",
        "near_ties",
        "max_logit_diff_vs_recompute",
    ):
        value = summary.get(key)
        print(f"{key:36s} {value:.4g}" if isinstance(value, float) else f"{key:36s} {value}")
