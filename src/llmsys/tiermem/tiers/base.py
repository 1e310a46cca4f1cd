"""The one tier interface every tier implements, and the bookkeeping they share.

A tier holds at most ``capacity_blocks = capacity_bytes // block_bytes`` blocks of exactly
``block_bytes`` each, in fixed slots; its capacity is never exceeded (``put`` into a full
tier returns False - the store evicts first). Calls:

- ``contains(key)``: whether ``key`` is resident (no I/O for local tiers).
- ``get_into(key, out) -> int | None``: copy the block into the caller's preallocated
  buffer ``out`` (``[block_bytes]`` bytes) and return its length, or None on a miss. A block
  that fails header/checksum verification is dropped, counted as ``corrupt`` and reported
  as a miss; an unreachable backend is counted in ``errors`` and reported as a miss.
- ``put(key, data, checksum=None) -> bool``: store a copy of ``data``; a key already
  resident is kept as it is (equal keys name equal prefixes, hence equal KV).
  ``checksum`` (xxh3_64 of ``data``), when the caller knows it, saves the tier a hash.
- ``delete(key) -> bool``; ``keys()``; ``stats()``; ``describe()``; ``close()``.

Metadata-only mode (``metadata_only=True``): the tier keeps its index and counters but no
bytes; ``get_into``/``put`` take ``None`` buffers and wait the tier's :class:`TransferModel`
cost on the injected clock, so a simulator replays traces through this same code.

Thread-safety: index and counters are guarded by one lock per tier; backend copies of
distinct slots run concurrently outside it.
"""

from __future__ import annotations

import enum
import itertools
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from llmsys.tiermem.clock import Clock
from llmsys.tiermem.errors import (
    BlockSizeError,
    CapacityError,
    CorruptBlockError,
    TierConfigError,
    TierUnavailableError,
)
from llmsys.tiermem.keys import BlockKey

log = logging.getLogger(__name__)


class TierKind(enum.Enum):
    """The kinds of tier, fastest first."""

    DRAM = "dram"
    """Preallocated host-memory arena."""
    CXL = "cxl"
    """Byte-addressable expansion memory (NUMA node, device-DAX or emulated)."""
    SSD = "ssd"
    """O_DIRECT slot file on local flash."""
    REMOTE = "remote"
    """Shared Redis server."""


@dataclass(frozen=True, slots=True)
class TransferModel:
    """Cost of one block transfer, used in metadata-only mode (and by simulators)."""

    latency_s: float
    """Fixed cost per transfer in seconds (>= 0)."""
    read_bytes_per_s: float
    """Bandwidth of ``get_into`` in bytes per second (> 0)."""
    write_bytes_per_s: float
    """Bandwidth of ``put`` in bytes per second (> 0)."""

    def __post_init__(self) -> None:
        """Raises: TierConfigError: negative latency or non-positive bandwidth."""
        if self.latency_s < 0:
            raise TierConfigError(f"latency_s must be >= 0, got {self.latency_s}")
        if self.read_bytes_per_s <= 0 or self.write_bytes_per_s <= 0:
            raise TierConfigError("transfer bandwidths must be > 0 bytes/s")

    def read_s(self, nbytes: int) -> float:
        """Seconds to read ``nbytes``."""
        return self.latency_s + nbytes / self.read_bytes_per_s

    def write_s(self, nbytes: int) -> float:
        """Seconds to write ``nbytes``."""
        return self.latency_s + nbytes / self.write_bytes_per_s


@dataclass(frozen=True, slots=True)
class TierStats:
    """A snapshot of one tier's counters."""

    kind: TierKind
    """Which tier."""
    hits: int
    """``get_into`` calls that returned a block."""
    misses: int
    """``get_into`` calls that returned None (absent, corrupt or unreachable)."""
    bytes_in: int
    """Payload bytes written into the tier."""
    bytes_out: int
    """Payload bytes read out of the tier."""
    evictions: int
    """Blocks removed to make room (counted by the store)."""
    corrupt: int
    """Blocks that failed verification and were dropped."""
    errors: int
    """Backend failures (e.g. Redis unreachable) absorbed as misses / failed puts."""
    resident_blocks: int
    """Blocks resident now."""
    capacity_blocks: int
    """Slots in the tier."""


class _Counter:
    """A lock-free event counter: ``next()`` on an ``itertools.count`` is atomic in CPython,
    so hot paths count without taking the tier lock (~50 ns instead of ~1 us)."""

    __slots__ = ("_count",)

    def __init__(self) -> None:
        self._count = itertools.count()

    def add(self) -> None:
        """Count one event."""
        next(self._count)

    @property
    def value(self) -> int:
        """Events counted so far."""
        return int(repr(self._count)[6:-1])  # "count(N)": the next value N = events so far


class _Entry:
    """Where a resident block lives: its slot and, if known, its payload checksum."""

    __slots__ = ("checksum", "slot")

    def __init__(self, slot: int, checksum: int | None) -> None:
        self.slot = slot
        self.checksum = checksum


_RESIDENT = _Entry(0, None)  # marker returned by _reserve; never stored in an index


class Tier(ABC):
    """Base of all tiers: fixed slots, index, counters, metadata-only mode."""

    kind: TierKind

    def __init__(
        self,
        *,
        block_bytes: int,
        capacity_bytes: int,
        clock: Clock,
        model: TransferModel,
        metadata_only: bool,
    ) -> None:
        """Set up the index over ``capacity_bytes // block_bytes`` slots.

        Raises:
            TierConfigError: ``block_bytes`` <= 0.
            CapacityError: ``capacity_bytes`` smaller than one block.
        """
        if block_bytes <= 0:
            raise TierConfigError(f"block_bytes must be > 0, got {block_bytes}")
        if capacity_bytes < block_bytes:
            raise CapacityError(
                f"{self.kind.value} tier capacity {capacity_bytes} B is smaller than one "
                f"block ({block_bytes} B)"
            )
        self.block_bytes = block_bytes
        self.capacity_blocks = capacity_bytes // block_bytes
        self.clock = clock
        self.model = model
        self.metadata_only = metadata_only
        self._lock = threading.Lock()
        self._index: dict[BlockKey, _Entry] = {}
        self._free: list[int] = list(range(self.capacity_blocks - 1, -1, -1))
        self._counts = {
            name: _Counter()
            for name in ("hits", "misses", "puts", "evictions", "corrupt", "errors")
        }

    # ---- public API -------------------------------------------------------------------

    def contains(self, key: BlockKey) -> bool:
        """Whether ``key`` is resident."""
        return key in self._index

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[BlockKey]:
        """Iterate over a snapshot of the resident keys."""
        return iter(self.keys())

    def keys(self) -> list[BlockKey]:
        """Resident keys (a snapshot)."""
        with self._lock:
            return list(self._index)

    @property
    def free_blocks(self) -> int:
        """Slots neither resident nor reserved by a put in flight."""
        return len(self._free)

    def get_into(self, key: BlockKey, out: memoryview | None) -> int | None:
        """Copy block ``key`` into ``out`` (``[block_bytes]`` bytes); return its length or None.

        ``out`` may be None only in metadata-only mode.

        Raises:
            BlockSizeError: ``out`` is not exactly ``block_bytes`` long.
        """
        self._check_buffer(out)
        entry = self._index.get(key)
        if entry is None:
            self._count("misses")
            return None
        if self.metadata_only:
            self.clock.sleep(self.model.read_s(self.block_bytes))
        else:
            assert out is not None
            try:
                found = self._read_into(key, entry, out)
            except CorruptBlockError as exc:
                log.warning("%s tier: dropping corrupt block %s: %s", self.kind.value, key, exc)
                self._drop(key, entry)
                self._count("corrupt")
                self._count("misses")
                return None
            except TierUnavailableError as exc:
                log.warning("%s tier unavailable on get: %s", self.kind.value, exc)
                self._count("errors")
                self._count("misses")
                return None
            if not found:  # vanished from a shared backend
                self._drop(key, entry, discard=False)
                self._count("misses")
                return None
        self._counts["hits"].add()
        return self.block_bytes

    def put(self, key: BlockKey, data: memoryview | None, checksum: int | None = None) -> bool:
        """Store a copy of ``data`` (``[block_bytes]`` bytes) under ``key``.

        Returns True if the block is resident afterwards (a resident key is not rewritten),
        False when the tier is full (capacity is never exceeded) or its backend failed
        (counted in ``errors``). ``data`` may be None only in metadata-only mode.

        Raises:
            BlockSizeError: ``data`` is not exactly ``block_bytes`` long.
        """
        self._check_buffer(data)
        entry = self._reserve(key, checksum)
        if entry is None:
            return False
        if entry is _RESIDENT:
            return True
        if self.metadata_only:
            self.clock.sleep(self.model.write_s(self.block_bytes))
        else:
            assert data is not None
            try:
                self._write(key, entry, data)
            except TierUnavailableError as exc:
                log.warning("%s tier unavailable on put: %s", self.kind.value, exc)
                self._unreserve(entry, error=True)
                return False
        self._publish(key, entry)
        return True

    def get_many_into(
        self, keys: Sequence[BlockKey], outs: Sequence[memoryview | None]
    ) -> list[int | None]:
        """``get_into`` for several blocks (tiers with pools or pipelines override it)."""
        return [self.get_into(k, o) for k, o in zip(keys, outs, strict=True)]

    def put_many(self, keys: Sequence[BlockKey], datas: Sequence[memoryview | None]) -> list[bool]:
        """``put`` for several blocks (tiers with pools or pipelines override it)."""
        return [self.put(k, d) for k, d in zip(keys, datas, strict=True)]

    def _reserve(self, key: BlockKey, checksum: int | None) -> _Entry | None:
        """Take a free slot for ``key``: the entry, ``_RESIDENT`` if present, None if full."""
        with self._lock:
            if key in self._index:
                return _RESIDENT
            if not self._free:
                return None
            return _Entry(self._free.pop(), checksum)

    def _unreserve(self, entry: _Entry, *, error: bool) -> None:
        with self._lock:
            self._free.append(entry.slot)
        if error:
            self._counts["errors"].add()

    def _publish(self, key: BlockKey, entry: _Entry) -> None:
        with self._lock:
            if key in self._index:  # a concurrent put of the same key won the race
                self._free.append(entry.slot)
                return
            self._index[key] = entry
        self._counts["puts"].add()

    def delete(self, key: BlockKey) -> bool:
        """Remove ``key``; return whether it was resident."""
        entry = self._index.get(key)
        if entry is None:
            return False
        self._drop(key, entry)
        return True

    def checksum_of(self, key: BlockKey) -> int | None:
        """The payload checksum of resident ``key`` if the tier knows it without I/O."""
        entry = self._index.get(key)
        return None if entry is None else entry.checksum

    def count_eviction(self) -> None:
        """Record one eviction (the store decides evictions, the tier keeps the count)."""
        self._count("evictions")

    def stats(self) -> TierStats:
        """Return a snapshot of the counters."""
        counts = {name: counter.value for name, counter in self._counts.items()}
        puts = counts.pop("puts")
        return TierStats(
            kind=self.kind,
            bytes_in=puts * self.block_bytes,
            bytes_out=counts["hits"] * self.block_bytes,
            resident_blocks=len(self._index),
            capacity_blocks=self.capacity_blocks,
            **counts,
        )

    def describe(self) -> dict[str, Any]:
        """Return a JSON-able description of the tier (recorded with every result)."""
        return {
            "kind": self.kind.value,
            "capacity_blocks": self.capacity_blocks,
            "block_bytes": self.block_bytes,
            "metadata_only": self.metadata_only,
            **self._describe_backend(),
        }

    def close(self) -> None:  # noqa: B027 - optional hook, most tiers hold nothing to free
        """Release backend resources; the tier must not be used afterwards."""

    # ---- helpers and backend hooks -----------------------------------------------------

    def _check_buffer(self, buf: memoryview | None) -> None:
        if buf is None:
            if not self.metadata_only:
                raise BlockSizeError(f"{self.kind.value} tier needs a buffer (not metadata-only)")
            return
        if buf.nbytes != self.block_bytes:
            raise BlockSizeError(
                f"{self.kind.value} tier stores {self.block_bytes}-byte blocks, got {buf.nbytes}"
            )

    def _count(self, name: str, times: int = 1) -> None:
        for _ in range(times):
            self._counts[name].add()

    def _drop(self, key: BlockKey, entry: _Entry, *, discard: bool = True) -> None:
        with self._lock:
            if self._index.get(key) is entry:
                del self._index[key]
                self._free.append(entry.slot)
        if discard and not self.metadata_only:
            self._discard(key, entry)

    def _adopt(self, found: dict[BlockKey, tuple[int, int | None]]) -> None:
        """Register blocks found on the backend at open: ``{key: (slot, checksum)}``."""
        with self._lock:
            for key, (slot, checksum) in found.items():
                self._index[key] = _Entry(slot, checksum)
            taken = {entry.slot for entry in self._index.values()}
            self._free = [s for s in range(self.capacity_blocks - 1, -1, -1) if s not in taken]

    @abstractmethod
    def _read_into(self, key: BlockKey, entry: _Entry, out: memoryview) -> bool:
        """Copy the block into ``out``; False if it vanished from a shared backend.

        Raises CorruptBlockError / TierUnavailableError, which ``get_into`` absorbs.
        """

    @abstractmethod
    def _write(self, key: BlockKey, entry: _Entry, data: memoryview) -> None:
        """Write ``data`` to ``entry.slot`` (set ``entry.checksum`` if computed)."""

    def _discard(self, key: BlockKey, entry: _Entry) -> None:  # noqa: B027 - optional hook
        """Backend cleanup after ``key`` left the index (default: nothing)."""

    def _describe_backend(self) -> dict[str, Any]:
        return {}
