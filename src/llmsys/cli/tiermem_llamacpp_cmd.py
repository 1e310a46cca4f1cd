"""``llmsys tiermem llamacpp-bench``: the llama-cpp-python prefix-cache benchmark.

Runs ``benchmarks/tiermem/bench_llamacpp.py`` (TieredLlama vs LlamaDiskCache and
LlamaRAMCache on the chat workload); arguments after ``--`` pass through.
"""

from __future__ import annotations

import argparse
import pathlib
import runpy
from typing import Any

from llmsys.core.errors import ConfigError

_SCRIPT = (
    pathlib.Path(__file__).resolve().parents[3] / "benchmarks" / "tiermem" / "bench_llamacpp.py"
)


def _llamacpp_bench(args: argparse.Namespace) -> int:
    if not _SCRIPT.is_file():
        raise ConfigError(f"{_SCRIPT} not found: llamacpp-bench runs from a source checkout")
    bench_args = list(args.bench_args)
    if bench_args[:1] == ["--"]:
        bench_args = bench_args[1:]
    module = runpy.run_path(str(_SCRIPT), run_name="llmsys_bench_llamacpp")
    return int(module["main"](bench_args) or 0)


def add_llamacpp_bench(children: Any) -> None:
    """Register ``llamacpp-bench`` under ``llmsys tiermem``."""
    p = children.add_parser(
        "llamacpp-bench",
        help="TieredLlama vs llama-cpp-python's LlamaDiskCache and LlamaRAMCache",
        description="Serve the chat workload through llama-cpp-python with LlamaDiskCache, "
        "with LlamaRAMCache and with the llmsys tiered prefix cache (TieredLlama), same "
        "logits_all setting; prints a table and a JSON line. Arguments after -- pass "
        "through (see 'llmsys tiermem llamacpp-bench -- --help').",
    )
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    p.set_defaults(handler=_llamacpp_bench)
