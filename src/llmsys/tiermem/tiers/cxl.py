"""``cxl`` tier: byte-addressable expansion memory, on one of three backends.

- ``NUMA``: CXL memory as a CPU-less NUMA node (empty ``/sys/devices/system/node/nodeN/
  cpulist``); the arena is allocated there with libnuma's ``numa_alloc_onnode`` (ctypes).
- ``DAX``: a device-DAX character device (``/dev/daxX.Y``), mmapped with 2 MiB alignment
  (a regular file works too, which is how the tests exercise this path).
- ``EMULATED``: real DRAM whose copies are paced to ``bandwidth_bytes_per_s`` plus
  ``latency_s`` per transfer. Pacing can only slow a copy, so the default bandwidth is this
  machine's measured memcpy bandwidth x ``bandwidth_share`` (a CXL x8 module's 25-40 GB/s
  vs 260-480 GB/s for a DDR5 host: about 1/10), plus 300 ns per transfer.

:func:`probe_cxl` finds a real backend; ``backend=None`` in :class:`CxlConfig` means "use what
the probe finds, else emulate". ``describe()`` records the backend, bandwidth and latency.

Blocks entering DRAM from here are verified (xxh3_64 computed at ``put``, checked at
``get_into``); the check runs inside the paced time, so it costs no emulated bandwidth.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import enum
import functools
import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmsys.core.machine import cpuless_numa_nodes, dax_devices, numa_nodes
from llmsys.tiermem.block import aligned_buffer, checksum, round_up
from llmsys.tiermem.clock import Clock
from llmsys.tiermem.errors import CorruptBlockError, TierConfigError, TierUnavailableError
from llmsys.tiermem.keys import BlockKey
from llmsys.tiermem.policy import PolicyKind
from llmsys.tiermem.tiers.base import Tier, TierKind, TransferModel, _Entry
from llmsys.tiermem.tiers.dram import SlotArena, _check_common

DAX_ALIGN_BYTES = 2 << 20
"""Mapping alignment of device-DAX."""


class CxlBackend(enum.Enum):
    """What memory backs the cxl tier."""

    NUMA = "numa"
    """A CPU-less NUMA node, via libnuma."""
    DAX = "dax"
    """A device-DAX file, via mmap."""
    EMULATED = "emulated"
    """Host DRAM with paced copies."""


@dataclass(frozen=True, slots=True)
class CxlProbe:
    """What :func:`probe_cxl` found on this machine."""

    backend: CxlBackend
    """Best backend available (EMULATED when no CXL memory exists)."""
    numa_node: int | None
    """CPU-less NUMA node id, if any."""
    dax_path: Path | None
    """Device-DAX path, if any."""
    detail: str
    """One human-readable line explaining the choice."""


def probe_cxl(sys_root: Path = Path("/sys"), dev_root: Path = Path("/dev")) -> CxlProbe:
    """Look for CXL memory the way ``llmsys doctor`` does (:mod:`llmsys.core.machine`): a
    CPU-less NUMA node with memory (used through libnuma), else a device-DAX device."""
    cpuless = cpuless_numa_nodes(numa_nodes(sys_root / "devices/system/node"))
    if cpuless and _libnuma() is not None:
        return CxlProbe(CxlBackend.NUMA, cpuless[0], None, f"CPU-less NUMA node {cpuless[0]}")
    dax = dax_devices(dev_root)
    if dax:
        return CxlProbe(CxlBackend.DAX, None, Path(dax[0]), f"device-DAX {dax[0]}")
    why = "CPU-less NUMA node but no libnuma" if cpuless else "no CPU-less NUMA node"
    return CxlProbe(CxlBackend.EMULATED, None, None, f"{why}, no /dev/dax*: emulated")


@functools.cache
def _libnuma() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("numa")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.numa_available.restype = ctypes.c_int
    lib.numa_alloc_onnode.restype = ctypes.c_void_p
    lib.numa_alloc_onnode.argtypes = [ctypes.c_size_t, ctypes.c_int]
    lib.numa_free.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return lib if lib.numa_available() >= 0 else None


@functools.cache
def measured_memcpy_bytes_per_s(nbytes: int = 32 << 20, repeats: int = 9) -> float:
    """Single-thread memcpy bandwidth of this machine (bytes/s), measured once per process.

    The fastest of ``repeats`` copies of ``nbytes``: other processes can only slow a copy
    down, so the best one is the closest to what the memory system can do.
    """
    src = np.frombuffer(aligned_buffer(nbytes), dtype=np.uint8)
    dst = np.frombuffer(aligned_buffer(nbytes), dtype=np.uint8)
    src.fill(1)
    np.copyto(dst, src)  # fault both buffers in
    best_s = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best_s = min(best_s, time.perf_counter() - start)
    return nbytes / best_s


@dataclass(frozen=True, slots=True)
class CxlConfig:
    """Configuration of the ``cxl`` tier."""

    capacity_bytes: int
    """Arena size; holds ``capacity_bytes // block_bytes`` blocks."""
    backend: CxlBackend | None = None
    """Backend to use; None: what :func:`probe_cxl` finds (EMULATED if nothing)."""
    numa_node: int | None = None
    """NUMA node for the NUMA backend (None: the probed CPU-less node)."""
    dax_path: Path | None = None
    """Device-DAX (or regular) file for the DAX backend (None: the probed device)."""
    bandwidth_bytes_per_s: float | None = None
    """Emulated bandwidth; None: measured memcpy bandwidth x ``bandwidth_share``."""
    bandwidth_share: float = 0.1
    """CXL module share of host DRAM bandwidth for the default emulated bandwidth."""
    latency_s: float = 300e-9
    """Emulated fixed cost per transfer (CXL load latency ~150-400 ns)."""
    policy: PolicyKind = PolicyKind.LRU
    """Eviction policy of this tier."""

    def __post_init__(self) -> None:
        """Raises: TierConfigError: non-positive sizes or shares, or a non-enum backend."""
        _check_common(self.capacity_bytes, self.policy)
        if self.backend is not None and not isinstance(self.backend, CxlBackend):
            raise TierConfigError(f"backend must be a CxlBackend, got {self.backend!r}")
        if self.bandwidth_bytes_per_s is not None and self.bandwidth_bytes_per_s <= 0:
            raise TierConfigError("bandwidth_bytes_per_s must be > 0")
        if not 0.0 < self.bandwidth_share <= 1.0:
            raise TierConfigError(f"bandwidth_share must be in (0, 1], got {self.bandwidth_share}")
        if self.latency_s < 0:
            raise TierConfigError(f"latency_s must be >= 0, got {self.latency_s}")


class CxlTier(Tier):
    """Expansion-memory arena; see module docstring."""

    kind = TierKind.CXL

    def __init__(
        self, config: CxlConfig, *, block_bytes: int, clock: Clock, metadata_only: bool = False
    ) -> None:
        """Map or allocate the arena on the chosen backend.

        Raises:
            CapacityError: capacity smaller than one block.
            TierUnavailableError: the NUMA or DAX backend was asked for but is unusable.
        """
        probe = probe_cxl() if config.backend is None else None
        backend = config.backend or (probe.backend if probe else CxlBackend.EMULATED)
        bandwidth = config.bandwidth_bytes_per_s
        if bandwidth is None:
            bandwidth = (
                DEFAULT_MODEL_BANDWIDTH
                if metadata_only
                else measured_memcpy_bytes_per_s() * config.bandwidth_share
            )
        self.backend = backend
        self.bandwidth_bytes_per_s = bandwidth
        self.latency_s = config.latency_s
        model = TransferModel(config.latency_s, bandwidth, bandwidth)
        super().__init__(
            block_bytes=block_bytes,
            capacity_bytes=config.capacity_bytes,
            clock=clock,
            model=model,
            metadata_only=metadata_only,
        )
        self.config = config
        self._paced = backend is CxlBackend.EMULATED
        self._release: list[Any] = []
        self._where = ""
        self._arena: SlotArena | None = None
        if not metadata_only:
            nbytes = round_up(block_bytes) * self.capacity_blocks
            buf = self._allocate(backend, nbytes, probe)
            self._arena = SlotArena(buf, block_bytes, self.capacity_blocks)

    def _allocate(self, backend: CxlBackend, nbytes: int, probe: CxlProbe | None) -> memoryview:
        if backend is CxlBackend.EMULATED:
            self._where = "host DRAM, paced"
            return aligned_buffer(nbytes)
        if backend is CxlBackend.NUMA:
            lib = _libnuma()
            node = self.config.numa_node
            if node is None and probe is not None:
                node = probe.numa_node
            if lib is None or node is None:
                raise TierUnavailableError("NUMA cxl backend needs libnuma and a node id")
            ptr = lib.numa_alloc_onnode(nbytes, node)
            if not ptr:
                raise TierUnavailableError(f"numa_alloc_onnode({nbytes}, {node}) failed")
            self._release.append(lambda: lib.numa_free(ptr, nbytes))
            self._where = f"NUMA node {node}"
            return memoryview((ctypes.c_ubyte * nbytes).from_address(ptr)).cast("B")
        path = self.config.dax_path or (probe.dax_path if probe is not None else None)
        if path is None:
            raise TierUnavailableError("DAX cxl backend needs dax_path")
        length = round_up(nbytes, DAX_ALIGN_BYTES)
        try:
            fd = os.open(path, os.O_RDWR)
            try:
                if Path(path).is_file() and os.fstat(fd).st_size < length:
                    os.ftruncate(fd, length)
                mapping = mmap.mmap(fd, length, mmap.MAP_SHARED)
            finally:
                os.close(fd)
        except OSError as exc:
            raise TierUnavailableError(f"cannot map DAX file {path}: {exc}") from exc
        self._release.append(mapping.close)
        self._where = str(path)
        return memoryview(mapping)[:nbytes]

    def _pace(self, start_s: float, nbytes: int) -> None:
        if self._paced:
            self.clock.sleep_until(start_s + self.latency_s + nbytes / self.bandwidth_bytes_per_s)

    def _read_into(self, key: BlockKey, entry: _Entry, out: memoryview) -> bool:
        assert self._arena is not None
        start = self.clock.now()
        self._arena.copy_out(entry.slot, out)
        if entry.checksum is not None and checksum(out) != entry.checksum:
            raise CorruptBlockError("cxl block checksum mismatch")
        self._pace(start, out.nbytes)
        return True

    def _write(self, key: BlockKey, entry: _Entry, data: memoryview) -> None:
        assert self._arena is not None
        start = self.clock.now()
        self._arena.copy_in(entry.slot, data)
        if entry.checksum is None:
            entry.checksum = checksum(data)
        self._pace(start, data.nbytes)

    def corrupt_for_test(self, key: BlockKey, offset: int = 0) -> None:
        """Flip one byte of resident ``key`` in place (fault injection for tests)."""
        entry = self._index[key]
        assert self._arena is not None
        arr = self._arena.array(entry.slot)
        arr[offset] ^= 0xFF

    def _describe_backend(self) -> dict[str, Any]:
        return {
            "backend": self.backend.value,
            "where": self._where,
            "configured_bandwidth_bytes_per_s": self.bandwidth_bytes_per_s,
            "latency_s": self.latency_s,
            "paced": self._paced,
            "policy": self.config.policy.value,
        }

    def close(self) -> None:
        """Free NUMA memory / unmap DAX."""
        self._arena = None
        while self._release:
            # BufferError: a caller still holds a view; the mapping goes when it is dropped.
            with contextlib.suppress(BufferError):
                self._release.pop()()


DEFAULT_MODEL_BANDWIDTH = 2.5e9
"""Metadata-only default cxl bandwidth (bytes/s) when none is configured: ~1/10 of DRAM."""
