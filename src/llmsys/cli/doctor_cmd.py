"""``llmsys doctor``: what this machine offers the three systems."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from llmsys.core.machine import probe_machine

_DEFAULT_CACHE = Path.home() / ".cache" / "llmsys"


def register(sub: Any) -> None:
    """Add ``doctor`` to ``sub`` (an argparse subparsers object)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "doctor",
        help="report what this machine offers (cores, memory, NUMA/CXL, DAX, O_DIRECT, GPUs, "
        "servers)",
        description="Measure and read what this machine offers llmsys: cores, memory, torch "
        "and its device, NUMA nodes (a CPU-less node is a CXL memory expander), device-DAX "
        "devices, whether O_DIRECT works in the cache directory, GPUs (NVML), and whether "
        "redis-server and llama-cpp-python's server are available.",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=_DEFAULT_CACHE,
        help="directory in which O_DIRECT is tried (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    report = probe_machine(args.cache_dir)
    if args.json:
        print(json.dumps(report.as_json()))
        return 0
    gib = 1024**3
    print(f"cores               {report.cores}")
    print(f"memory              {report.memory_bytes / gib:.1f} GiB")
    print(f"torch               {report.torch_version} on {report.torch_device}")
    nodes = ", ".join(
        f"node{n.node_id} cpus[{n.cpus or '-'}] {((n.memory_bytes or 0) / gib):.1f} GiB"
        for n in report.numa_nodes
    )
    print(f"numa nodes          {nodes or 'none'}")
    cxl = report.cpuless_numa_nodes
    print(f"cpu-less numa (cxl) {cxl if cxl else 'none - tiermem emulates its cxl tier'}")
    print(f"device-dax          {', '.join(report.dax_devices) or 'none'}")
    print(f"o_direct            {'works' if report.o_direct_ok else 'fails'} in {report.cache_dir}")
    gpus = ", ".join(f"{g.index}: {g.name} {g.memory_bytes / gib:.0f} GiB" for g in report.gpus)
    print(f"gpus                {gpus or 'none'}")
    print(f"redis-server        {report.redis_server or 'not found'}")
    print(f"llama.cpp server    {report.llama_cpp_server or 'not installed'}")
    for note in report.notes:
        print(f"note: {note}")
    return 0
