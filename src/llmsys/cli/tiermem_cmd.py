"""``llmsys tiermem ...`` subcommands: the tiered KV block store.

- ``info``: what this machine offers each tier (CXL probe, O_DIRECT and native AIO of a cache
  directory, memcpy and xxh3 speed, the default emulated cxl bandwidth, Redis reachability).
- ``bench-tiers``: run ``benchmarks/tiermem/bench_tiers.py`` (arguments pass through).
- ``demo``: the tiermem demo (two requests sharing a prefix over dram -> cxl -> ssd).

Registration is a list of ``_add_*`` functions, so later issues add ``bench``,
``simulate`` or ``weights-bench`` by appending one function.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import runpy
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from llmsys.cli.tiermem_llamacpp_cmd import add_llamacpp_bench
from llmsys.cli.tiermem_serve_cmd import add_bench as add_serving_bench
from llmsys.cli.tiermem_sim_cmd import add_simulate
from llmsys.cli.tiermem_weights_cmd import add_weights_bench
from llmsys.core.errors import ConfigError, InputError
from llmsys.core.machine import o_direct_supported
from llmsys.tiermem import (
    CxlConfig,
    DramConfig,
    MonotonicClock,
    RemoteConfig,
    StoreConfig,
    TieredStore,
    TierKind,
    aligned_buffer,
    checksum,
    probe_cxl,
)
from llmsys.tiermem.tiers.aio import native_aio_available
from llmsys.tiermem.tiers.cxl import measured_memcpy_bytes_per_s
from llmsys.tiermem.tiers.remote import RemoteTier

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]


def _parse_redis(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--redis expects HOST:PORT, got {address!r}")
    return host, int(port)


def _info(args: argparse.Namespace) -> int:
    probe = probe_cxl()
    cache_dir = pathlib.Path(args.cache_dir)
    if not cache_dir.is_dir():
        raise InputError(f"--cache-dir {cache_dir} is not a directory")
    memcpy = measured_memcpy_bytes_per_s()
    buf = aligned_buffer(16 << 20)
    np.frombuffer(buf, dtype=np.uint8).fill(7)
    start = time.perf_counter()
    for _ in range(5):
        checksum(buf)
    xxh3 = 5 * buf.nbytes / (time.perf_counter() - start)
    report: dict[str, Any] = {
        "cxl_backend": probe.backend.value,
        "cxl_detail": probe.detail,
        "cache_dir": str(cache_dir),
        "cache_dir_o_direct": o_direct_supported(cache_dir),
        "ssd_native_aio": native_aio_available(),
        "memcpy_gb_per_s": round(memcpy / 1e9, 2),
        "xxh3_gb_per_s": round(xxh3 / 1e9, 2),
        "emulated_cxl_default_gb_per_s": round(memcpy * CxlConfig(1).bandwidth_share / 1e9, 2),
    }
    if args.redis:
        host, port = _parse_redis(args.redis)
        tier = RemoteTier(
            RemoteConfig(1, host=host, port=port), block_bytes=1, clock=MonotonicClock()
        )
        report["redis_reachable"] = tier.ping()
        report["redis_error"] = tier.last_error
        tier.close()
    for name, value in report.items():
        print(f"{name:32s} {value}")
    return 0


def _bench_tiers(args: argparse.Namespace) -> int:
    script = _REPO_ROOT / "benchmarks" / "tiermem" / "bench_tiers.py"
    if not script.is_file():
        raise ConfigError(f"{script} not found: bench-tiers runs from a source checkout")
    bench_args = list(args.bench_args)
    if bench_args[:1] == ["--"]:
        bench_args = bench_args[1:]
    module = runpy.run_path(str(script), run_name="llmsys_bench_tiers")
    status = module["main"](bench_args)
    return int(status or 0)


def _demo(args: argparse.Namespace) -> int:
    from llmsys.tiermem.demo import run_demo

    out_dir = pathlib.Path(args.out_dir) if args.out_dir else pathlib.Path(tempfile.mkdtemp())
    for line in run_demo(out_dir):
        print(line)
    return 0


def _describe(args: argparse.Namespace) -> int:
    """Open the store the flags describe and print its description (backends, bandwidths)."""
    from llmsys.tiermem import Namespace, SsdConfig, TierConfig

    mib = 1 << 20
    tiers: list[TierConfig] = [DramConfig(args.dram_mib * mib)]
    if args.cxl_mib:
        tiers.append(CxlConfig(args.cxl_mib * mib))
    if args.ssd_dir:
        tiers.append(SsdConfig(pathlib.Path(args.ssd_dir), args.ssd_mib * mib))
    if args.redis:
        host, port = _parse_redis(args.redis)
        tiers.append(RemoteConfig(args.redis_mib * mib, host=host, port=port))
    ns = Namespace("cli", "float16", "contiguous", 16, args.block_bytes)
    with TieredStore(ns, StoreConfig(tiers=tuple(tiers))) as store:
        remote = store.tier(TierKind.REMOTE)
        if isinstance(remote, RemoteTier):
            remote.ping()  # so the description says whether Redis answers
        print(json.dumps(store.describe(), indent=2))
    return 0


def _add_info(children: Any) -> None:
    p = children.add_parser(
        "info",
        help="what this machine offers each tier",
        description="Probe CXL memory (CPU-less NUMA node, /dev/dax*), check O_DIRECT on the "
        "cache directory and whether the kernel grants native AIO (the ssd tier then hashes "
        "blocks of 2 MiB and more while writing them), measure memcpy and xxh3 speed, and "
        "optionally ping Redis.",
    )
    p.add_argument(
        "--cache-dir",
        default=tempfile.gettempdir(),
        help="directory the ssd tier would use (default: the temp directory)",
    )
    p.add_argument("--redis", metavar="HOST:PORT", help="also check this Redis server")
    p.set_defaults(handler=_info)


def _add_bench_tiers(children: Any) -> None:
    p = children.add_parser(
        "bench-tiers",
        help="benchmark every tier against the hardware ceilings",
        description="Run benchmarks/tiermem/bench_tiers.py; arguments after -- pass through "
        "(see 'llmsys tiermem bench-tiers -- --help').",
    )
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    p.set_defaults(handler=_bench_tiers)


def _add_demo(children: Any) -> None:
    p = children.add_parser(
        "demo",
        help="run the tiermem demo",
        description="Two requests sharing a prefix over dram, cxl, ssd.",
    )
    p.add_argument("--out-dir", help="directory for the ssd tier (default: a temp dir)")
    p.set_defaults(handler=_demo)


def _add_describe(children: Any) -> None:
    p = children.add_parser(
        "describe",
        help="open a store and print which backends it uses, as JSON",
        description="Open a store with the given tiers and print describe(): the cxl backend "
        "it picked (NUMA node, device-DAX or emulated, with bandwidth and latency), the ssd "
        "file, Redis reachability. Blocks already in the ssd directory are adopted.",
    )
    p.add_argument("--block-bytes", type=int, default=1 << 20, help="block size in bytes")
    p.add_argument("--dram-mib", type=int, default=64, help="dram tier size (MiB)")
    p.add_argument("--cxl-mib", type=int, default=0, help="cxl tier size (MiB; 0: none)")
    p.add_argument("--ssd-dir", help="ssd tier directory (omit: no ssd tier)")
    p.add_argument("--ssd-mib", type=int, default=256, help="ssd tier size (MiB)")
    p.add_argument("--redis", metavar="HOST:PORT", help="remote tier server (omit: none)")
    p.add_argument("--redis-mib", type=int, default=256, help="remote tier size (MiB)")
    p.set_defaults(handler=_describe)


_COMMANDS: list[Callable[[Any], None]] = [
    _add_info,
    _add_bench_tiers,
    add_serving_bench,
    _add_demo,
    _add_describe,
    add_simulate,
    add_weights_bench,
    add_llamacpp_bench,
]
"""Subcommand registrars, in help order; later issues append theirs."""


def register(sub: Any) -> None:
    """Add the ``tiermem`` subcommand and its children to ``sub`` (argparse subparsers)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "tiermem",
        help="tiered KV memory for inference (dram, cxl, ssd, redis) with foresight prefetch",
        description="ITME tiered KV memory: inspect the machine, benchmark the tiers, serve "
        "the bundled model through them against CPU offloading (bench), run the demo.",
    )
    children = parser.add_subparsers(dest="tiermem_command", metavar="COMMAND")
    children.required = True
    for add in _COMMANDS:
        add(children)
