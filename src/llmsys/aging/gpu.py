"""GPU memory readings for the monitor: NVML when a GPU exists, recorded replay for tests.

Protocol: a :class:`GpuBackend` answers :meth:`~GpuBackend.sample` with a
:class:`GpuSnapshot` (per-device used/total bytes and per-process used bytes) or None when
it has nothing for that moment. :class:`NvmlBackend` reads NVML through ``pynvml``
(``nvmlDeviceGetMemoryInfo`` and ``nvmlDeviceGetComputeRunningProcesses``);
:class:`RecordingGpuBackend` wraps any backend and appends each snapshot to a JSONL file;
:class:`ReplayGpuBackend` plays such a file back by monitor time (the latest snapshot at or
before ``t_s``; None before the first), so the monitor's GPU path runs without a GPU.
:func:`detect_gpu_backend` returns an NVML backend or None.

JSONL line: ``{"t_s": 12.0, "devices": [[used_bytes, total_bytes], ...],
"processes": {"PID": used_bytes, ...}}``.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from llmsys.core.errors import InputError

__all__ = [
    "GpuBackend",
    "GpuSnapshot",
    "NvmlBackend",
    "RecordingGpuBackend",
    "ReplayGpuBackend",
    "detect_gpu_backend",
]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GpuSnapshot:
    """GPU memory at one moment."""

    t_s: float
    """Monitor time of the reading, seconds."""
    devices: tuple[tuple[int, int], ...]
    """``[num_devices]`` pairs (used_bytes, total_bytes)."""
    processes: dict[int, int]
    """PID -> bytes of device memory it uses (summed over devices)."""

    def to_json(self) -> str:
        """One JSONL line."""
        return json.dumps(
            {
                "t_s": self.t_s,
                "devices": [list(d) for d in self.devices],
                "processes": {str(k): v for k, v in self.processes.items()},
            }
        )

    @classmethod
    def from_json(cls, line: str) -> GpuSnapshot:
        """Parse one JSONL line. Raises InputError when malformed."""
        try:
            obj = json.loads(line)
            return cls(
                t_s=float(obj["t_s"]),
                devices=tuple((int(u), int(t)) for u, t in obj["devices"]),
                processes={int(k): int(v) for k, v in obj["processes"].items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"bad GPU snapshot line {line[:80]!r}: {exc}") from exc


class GpuBackend(Protocol):
    """Source of GPU snapshots."""

    device_count: int

    def sample(self, t_s: float) -> GpuSnapshot | None:
        """Return the snapshot for monitor time ``t_s``, or None if there is none."""


class NvmlBackend:
    """Reads NVML through ``pynvml`` (the ``nvidia-ml-py`` package).

    Raises:
        ImportError: ``pynvml`` is not installed.
        RuntimeError: NVML could not be initialised (``pynvml.NVMLError``).
    """

    def __init__(self) -> None:
        import pynvml

        self._nvml: Any = pynvml
        pynvml.nvmlInit()
        self.device_count = int(pynvml.nvmlDeviceGetCount())
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(self.device_count)]
        self._lock = threading.Lock()

    def sample(self, t_s: float) -> GpuSnapshot | None:
        """Read every device now; None (logged) if NVML fails."""
        nvml = self._nvml
        devices: list[tuple[int, int]] = []
        processes: dict[int, int] = {}
        try:
            with self._lock:
                for handle in self._handles:
                    info = nvml.nvmlDeviceGetMemoryInfo(handle)
                    devices.append((int(info.used), int(info.total)))
                    for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                        used = proc.usedGpuMemory  # None where the driver hides it
                        if used is not None:
                            processes[proc.pid] = processes.get(proc.pid, 0) + int(used)
        except nvml.NVMLError as exc:
            _LOG.warning("NVML read failed: %s", exc)
            return None
        return GpuSnapshot(t_s, tuple(devices), processes)


class RecordingGpuBackend:
    """Wraps a backend and appends every snapshot it returns to ``path`` (JSONL)."""

    def __init__(self, inner: GpuBackend, path: Path) -> None:
        self._inner = inner
        self.device_count = inner.device_count
        self._path = path
        self._lock = threading.Lock()

    def sample(self, t_s: float) -> GpuSnapshot | None:
        """Sample the inner backend and record the result."""
        snap = self._inner.sample(t_s)
        if snap is not None:
            with self._lock, open(self._path, "a") as fh:
                fh.write(snap.to_json() + "\n")
        return snap


class ReplayGpuBackend:
    """Plays back recorded snapshots by monitor time.

    Raises:
        InputError: the file is empty, malformed, or not in time order.
    """

    def __init__(self, snapshots: list[GpuSnapshot]) -> None:
        if not snapshots:
            raise InputError("a GPU replay needs at least one snapshot")
        times = [s.t_s for s in snapshots]
        if any(b < a for a, b in itertools.pairwise(times)):
            raise InputError("GPU replay snapshots must be in time order")
        self._snapshots = snapshots
        self._times = times
        self.device_count = len(snapshots[0].devices)

    @classmethod
    def from_file(cls, path: Path) -> ReplayGpuBackend:
        """Load a JSONL file written by :class:`RecordingGpuBackend`.

        The monitor's threads record concurrently, so lines are put in time order (stably).
        """
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        snaps = sorted((GpuSnapshot.from_json(ln) for ln in lines), key=lambda s: s.t_s)
        return cls(snaps)

    def with_pids(self, mapping: dict[int, int]) -> ReplayGpuBackend:
        """A copy whose recorded PIDs are renamed by ``mapping`` (recorded -> live PID).

        Lets a recording from a GPU host drive a monitor watching local processes.
        """
        return ReplayGpuBackend(
            [
                GpuSnapshot(
                    s.t_s, s.devices, {mapping.get(p, p): b for p, b in s.processes.items()}
                )
                for s in self._snapshots
            ]
        )

    def sample(self, t_s: float) -> GpuSnapshot | None:
        """The latest snapshot recorded at or before ``t_s``; None before the first."""
        i = bisect.bisect_right(self._times, t_s)
        return self._snapshots[i - 1] if i else None


def detect_gpu_backend() -> GpuBackend | None:
    """Return an NVML backend when pynvml and a GPU are present, else None."""
    try:
        backend = NvmlBackend()
    except ImportError:
        return None
    except Exception as exc:  # pynvml.NVMLError has no common base we can import without it
        _LOG.info("no NVML GPU: %s", exc)
        return None
    return backend if backend.device_count else None
