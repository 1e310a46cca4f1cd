"""Weight streaming benchmark: layer-ahead streaming vs resident, on demand and accelerate.

Runs :func:`llmsys.tiermem.weights_bench.run_weights_bench` (the same call as
``llmsys tiermem weights-bench``), prints a table, then one JSON line with the weight-streaming
issue's keys, and writes it to ``results/tiermem_weights_<tier>.json``::

    python benchmarks/tiermem/bench_weights.py [--tier cxl|ssd] [--window K] [--prompt-tokens N]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from llmsys.cli.tiermem_weights_cmd import print_table
from llmsys.tiermem.tiers import parse_tier_kind
from llmsys.tiermem.weights_bench import WeightsBenchOptions, run_weights_bench

RESULTS = Path(__file__).resolve().parents[2] / "results"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", default="cxl", help="cxl or ssd")
    parser.add_argument("--window", type=int, default=3, help="layer buffers resident")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-accelerate", action="store_true")
    parser.add_argument("--work-dir", type=Path, help="ssd tier / offload directory")
    parser.add_argument("--out", type=Path, help="results file (default: results/...)")
    args = parser.parse_args(argv)
    options = WeightsBenchOptions(
        tier=parse_tier_kind(args.tier),
        window_layers=args.window,
        prompt_tokens=args.prompt_tokens,
        repeats=args.repeats,
        accelerate=not args.no_accelerate,
        work_dir=args.work_dir,
    )

    def progress(label: str, done: int, total: int) -> None:
        print(f"  {label}: {done}/{total}", file=sys.stderr, flush=True)

    summary = run_weights_bench(options, progress)
    print_table(summary)
    out = args.out or RESULTS / f"tiermem_weights_{options.tier.value}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
