"""What this machine offers the three systems, each fact measured or read from the system.

:func:`probe_machine` returns a :class:`MachineReport`; ``llmsys doctor`` prints it. Nothing
here is assumed: NUMA nodes come from ``/sys/devices/system/node``, a CPU-less node (how Linux
shows a CXL memory expander) is one whose ``cpulist`` is empty, device-DAX devices are the
character devices under ``/dev/dax*``, and O_DIRECT is tried on the cache directory with an
aligned 4 KiB write and read.
"""

from __future__ import annotations

import contextlib
import importlib.util
import mmap
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "GpuInfo",
    "MachineReport",
    "NumaNode",
    "cpuless_numa_nodes",
    "dax_devices",
    "numa_nodes",
    "o_direct_supported",
    "probe_machine",
]

_NODE_ROOT = Path("/sys/devices/system/node")
_ALIGN_BYTES = 4096


@dataclass(frozen=True, slots=True)
class NumaNode:
    """One NUMA node as the kernel reports it."""

    node_id: int
    """The N of ``/sys/devices/system/node/nodeN``."""
    cpus: str
    """Its ``cpulist`` (empty for a CPU-less node such as a CXL memory expander)."""
    memory_bytes: int | None
    """MemTotal of the node, or None when the kernel does not say."""


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One GPU, from NVML when it is available, else from torch."""

    index: int
    """Device index."""
    name: str
    """Marketing name."""
    memory_bytes: int
    """Total device memory."""


@dataclass(frozen=True, slots=True)
class MachineReport:
    """Everything ``llmsys doctor`` reports; :meth:`as_json` gives the documented keys."""

    cores: int
    """Logical CPUs usable by this process."""
    memory_bytes: int
    """Total system memory."""
    torch_version: str | None
    """Installed torch version, or None."""
    torch_device: str
    """``cuda`` when torch sees a GPU, else ``cpu``."""
    numa_nodes: list[NumaNode]
    """All NUMA nodes."""
    cpuless_numa_nodes: list[int]
    """Ids of nodes with memory but no CPUs (CXL expanders)."""
    dax_devices: list[str]
    """Device-DAX character devices (``/dev/daxX.Y``)."""
    o_direct_ok: bool
    """Whether an aligned O_DIRECT write+read worked in :attr:`cache_dir`."""
    cache_dir: str
    """The directory O_DIRECT was tried in."""
    gpus: list[GpuInfo]
    """GPUs found (NVML first, torch as fallback)."""
    redis_server: str | None
    """``redis-server --version`` output, or None when the binary is absent."""
    llama_cpp_server: str | None
    """llama-cpp-python version when its OpenAI server module is importable, else None."""
    notes: list[str] = field(default_factory=list)
    """Human-readable remarks (why something is missing)."""

    def as_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict with the documented keys."""
        return asdict(self)


def numa_nodes(root: Path = _NODE_ROOT) -> list[NumaNode]:
    """Return the NUMA nodes under ``root`` (empty when the kernel exposes none)."""
    nodes: list[NumaNode] = []
    if not root.is_dir():
        return nodes
    for entry in sorted(root.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        cpus = _read(entry / "cpulist").strip()
        mem = None
        match = re.search(r"MemTotal:\s+(\d+) kB", _read(entry / "meminfo"))
        if match:
            mem = int(match.group(1)) * 1024
        nodes.append(NumaNode(node_id=int(entry.name[4:]), cpus=cpus, memory_bytes=mem))
    return nodes


def cpuless_numa_nodes(nodes: list[NumaNode]) -> list[int]:
    """Return the ids of nodes that have memory but no CPUs."""
    return [n.node_id for n in nodes if not n.cpus and (n.memory_bytes or 0) > 0]


def dax_devices(dev: Path = Path("/dev")) -> list[str]:
    """Return device-DAX character devices (``/dev/daxX.Y``)."""
    return sorted(str(p) for p in dev.glob("dax*") if p.is_char_device())


def o_direct_supported(directory: Path) -> bool:
    """Try an aligned 4 KiB O_DIRECT write and read-back in ``directory``."""
    if not hasattr(os, "O_DIRECT"):
        return False
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd_path = tempfile.mkstemp(prefix=".odirect-", dir=directory)
    except OSError:
        return False
    os.close(fd_path[0])
    path = fd_path[1]
    buf = mmap.mmap(-1, _ALIGN_BYTES)  # anonymous maps are page-aligned
    try:
        buf.write(b"\xa5" * _ALIGN_BYTES)
        fd = os.open(path, os.O_RDWR | os.O_DIRECT)
        try:
            if os.pwritev(fd, [buf], 0) != _ALIGN_BYTES:
                return False
            back = mmap.mmap(-1, _ALIGN_BYTES)
            try:
                ok = os.preadv(fd, [back], 0) == _ALIGN_BYTES and back[:] == buf[:]
            finally:
                back.close()
            return ok
        finally:
            os.close(fd)
    except OSError:
        return False
    finally:
        buf.close()
        with contextlib.suppress(OSError):
            os.unlink(path)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _memory_bytes() -> int:
    match = re.search(r"MemTotal:\s+(\d+) kB", _read(Path("/proc/meminfo")))
    if match:
        return int(match.group(1)) * 1024
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _gpus(notes: list[str]) -> tuple[list[GpuInfo], str, str | None]:
    torch_version = None
    torch_device = "cpu"
    gpus: list[GpuInfo] = []
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = pynvml.nvmlDeviceGetName(h)
                total = int(pynvml.nvmlDeviceGetMemoryInfo(h).total)
                gpus.append(GpuInfo(i, name if isinstance(name, str) else name.decode(), total))
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # NVML absent or no driver: fall back to torch
        notes.append(f"NVML unavailable ({type(exc).__name__})")
    try:
        import torch

        torch_version = str(torch.__version__)
        if torch.cuda.is_available():
            torch_device = "cuda"
            if not gpus:
                for i in range(torch.cuda.device_count()):
                    p = torch.cuda.get_device_properties(i)
                    gpus.append(GpuInfo(i, p.name, int(p.total_memory)))
    except ImportError:
        notes.append("torch is not installed")
    return gpus, torch_device, torch_version


def _redis_version() -> str | None:
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or exe


def _llama_cpp_server() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    try:
        from importlib.metadata import version

        ver = version("llama_cpp_python")
    except Exception:
        ver = "unknown"
    # the server extra needs fastapi/uvicorn/sse-starlette
    for module in ("fastapi", "uvicorn", "sse_starlette"):
        if importlib.util.find_spec(module) is None:
            return None
    return ver


def probe_machine(cache_dir: Path) -> MachineReport:
    """Measure and read what this machine offers; ``cache_dir`` is where O_DIRECT is tried."""
    notes: list[str] = []
    nodes = numa_nodes()
    if not nodes:
        notes.append("the kernel exposes no NUMA topology")
    gpus, torch_device, torch_version = _gpus(notes)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    redis = _redis_version()
    if redis is None:
        notes.append("redis-server not found (the setup step installs it with apt)")
    llama = _llama_cpp_server()
    if llama is None:
        notes.append("llama-cpp-python's server is not importable")
    return MachineReport(
        cores=int(cores or 1),
        memory_bytes=_memory_bytes(),
        torch_version=torch_version,
        torch_device=torch_device,
        numa_nodes=nodes,
        cpuless_numa_nodes=cpuless_numa_nodes(nodes),
        dax_devices=dax_devices(),
        o_direct_ok=o_direct_supported(cache_dir),
        cache_dir=str(cache_dir),
        gpus=gpus,
        redis_server=redis,
        llama_cpp_server=llama,
        notes=notes,
    )
