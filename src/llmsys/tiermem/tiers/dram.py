"""``dram`` tier: a preallocated host-memory arena of fixed, page-aligned slots.

Blocks are copied in and out with one memcpy each (no per-layer copies, no checksum: a
block in DRAM is trusted; it was verified when it entered from a slower tier). ``view``
exposes a slot without copying, for demotion to a slower tier and for engines that read
KV in place while the block is pinned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from llmsys.tiermem.block import aligned_buffer, round_up
from llmsys.tiermem.clock import Clock
from llmsys.tiermem.errors import TierConfigError
from llmsys.tiermem.keys import BlockKey
from llmsys.tiermem.policy import PolicyKind
from llmsys.tiermem.tiers.base import Tier, TierKind, TransferModel, _Entry

DEFAULT_DRAM_MODEL = TransferModel(latency_s=1e-6, read_bytes_per_s=10e9, write_bytes_per_s=10e9)
"""Metadata-only cost of the dram tier (this machine class: memcpy 5-11 GB/s, one thread)."""


@dataclass(frozen=True, slots=True)
class DramConfig:
    """Configuration of the ``dram`` tier."""

    capacity_bytes: int
    """Arena size; holds ``capacity_bytes // block_bytes`` blocks."""
    policy: PolicyKind = PolicyKind.LRU
    """Eviction policy of this tier."""
    model: TransferModel = DEFAULT_DRAM_MODEL
    """Transfer cost used in metadata-only mode."""

    def __post_init__(self) -> None:
        """Raises: TierConfigError: capacity not a positive int or policy not a PolicyKind."""
        _check_common(self.capacity_bytes, self.policy)


def _check_common(capacity_bytes: int, policy: PolicyKind) -> None:
    if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int):
        raise TierConfigError(f"capacity_bytes must be an int, got {capacity_bytes!r}")
    if capacity_bytes <= 0:
        raise TierConfigError(f"capacity_bytes must be > 0, got {capacity_bytes}")
    if not isinstance(policy, PolicyKind):
        raise TierConfigError(f"policy must be a PolicyKind, got {policy!r}")


GIL_FREE_COPY_BYTES = 1 << 20
"""Blocks this big are copied with ``np.copyto``, which releases the GIL (a memoryview slice
assignment holds it for the whole memcpy: ~2-3 ms per 14 MB weight block here, stalling the
compute thread each time it reenters Python); smaller ones keep the memoryview copy, which
has less per-call overhead."""


class SlotArena:
    """Fixed-size slots over one contiguous buffer; slot starts are page-aligned."""

    def __init__(self, buffer: memoryview, block_bytes: int, capacity_blocks: int) -> None:
        """Wrap ``buffer`` (at least ``capacity_blocks`` page-rounded slots long)."""
        self.stride_bytes = round_up(block_bytes)
        if buffer.nbytes < self.stride_bytes * capacity_blocks:
            raise TierConfigError("arena buffer smaller than its slots")
        self.buffer = buffer
        self.block_bytes = block_bytes
        array = np.frombuffer(buffer, dtype=np.uint8)
        # Per-slot views made once: the hot path indexes a list instead of slicing.
        self._views = [
            buffer[s * self.stride_bytes : s * self.stride_bytes + block_bytes]
            for s in range(capacity_blocks)
        ]
        self._arrays = [
            array[s * self.stride_bytes : s * self.stride_bytes + block_bytes]
            for s in range(capacity_blocks)
        ]

    def view(self, slot: int) -> memoryview:
        """Writable view of slot ``slot`` (``[block_bytes]`` bytes)."""
        return self._views[slot]

    def array(self, slot: int) -> np.ndarray:
        """The same slot as a uint8 numpy array ``[block_bytes]`` (no copy)."""
        return self._arrays[slot]

    def copy_out(self, slot: int, out: memoryview) -> None:
        """memcpy slot ``slot`` into ``out`` (``[block_bytes]``, any contiguous format)."""
        if out.format == "B" and out.ndim == 1 and self.block_bytes < GIL_FREE_COPY_BYTES:
            out[:] = self._views[slot]
        else:
            np.copyto(np.frombuffer(out, dtype=np.uint8), self._arrays[slot])

    def copy_in(self, slot: int, data: memoryview) -> None:
        """memcpy ``data`` (``[block_bytes]``, any contiguous format) into slot ``slot``."""
        if data.format == "B" and data.ndim == 1 and self.block_bytes < GIL_FREE_COPY_BYTES:
            self._views[slot][:] = data
        else:
            np.copyto(self._arrays[slot], np.frombuffer(data, dtype=np.uint8))


def copy_bytes(dst: memoryview, src: memoryview) -> None:
    """memcpy ``src`` into ``dst`` (equal byte lengths, any contiguous formats)."""
    np.copyto(np.frombuffer(dst, dtype=np.uint8), np.frombuffer(src, dtype=np.uint8))


class DramTier(Tier):
    """Host-memory arena; see module docstring."""

    kind = TierKind.DRAM

    def __init__(
        self, config: DramConfig, *, block_bytes: int, clock: Clock, metadata_only: bool = False
    ) -> None:
        """Allocate the arena (nothing in metadata-only mode).

        Raises:
            CapacityError: capacity smaller than one block.
        """
        super().__init__(
            block_bytes=block_bytes,
            capacity_bytes=config.capacity_bytes,
            clock=clock,
            model=config.model,
            metadata_only=metadata_only,
        )
        self.config = config
        self._arena: SlotArena | None = None
        if not metadata_only:
            nbytes = round_up(block_bytes) * self.capacity_blocks
            self._arena = SlotArena(aligned_buffer(nbytes), block_bytes, self.capacity_blocks)

    def view(self, key: BlockKey) -> memoryview | None:
        """Zero-copy view of resident ``key``'s bytes, or None (absent / metadata-only).

        The view stays valid while the block is pinned in the store.
        """
        entry = self._index.get(key)
        if entry is None or self._arena is None:
            return None
        return self._arena.view(entry.slot)

    def _read_into(self, key: BlockKey, entry: _Entry, out: memoryview) -> bool:
        assert self._arena is not None
        self._arena.copy_out(entry.slot, out)
        return True

    def _write(self, key: BlockKey, entry: _Entry, data: memoryview) -> None:
        assert self._arena is not None
        self._arena.copy_in(entry.slot, data)

    def _describe_backend(self) -> dict[str, Any]:
        return {"backend": "host-arena", "policy": self.config.policy.value}
