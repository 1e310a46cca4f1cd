"""Where a :class:`~llmsys.tiermem.TieredStore`'s blocks live and how they move between tiers.

:class:`TierMoves` is the store's placement state and its moves; the store adds the public
protocol on top. All state is guarded by one lock (``_lock``); ``_where`` is read without it.

A move copies a block's bytes without the lock, in three steps:

1. *plan* (lock held): the victim is chosen and marked *moving* (never evicted or moved
   again until it lands), a slot in the destination is reserved - recursively, so a
   cascade dram -> cxl -> ssd is planned deepest move first - and the slot the victim
   will free is counted (``_leaving``) as backing the reservation that needed it;
2. *copy* (no lock): the planning thread copies the block into the reserved slot;
3. *publish* (lock held): the block's location switches to the destination, the source
   slot is freed, and waiters on ``_moved`` are woken.

A tier's room is ``free + leaving - reserved``; a reservation backed by a leaving slot is
used only after its move published, by the thread that planned it, and every move
publishes without waiting on anything but its own I/O, so waiting for a moving block
cannot deadlock. Promotions (a hit or a prefetch moving a block up) mark the block moving
too and run the demotions they need the same way. ``read`` waits until none of its pinned
blocks is moving and marks them *being read*, so no promotion frees a slot under it; a
prefetch skips blocks being read and waits for moving ones. A moving block stays readable
at its source until published and its source slot is reused only after that, so a
half-written block is never served.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from llmsys.tiermem.block import aligned_buffer
from llmsys.tiermem.keys import BlockKey
from llmsys.tiermem.policy import EvictionPolicy
from llmsys.tiermem.tiers.base import Tier
from llmsys.tiermem.tiers.dram import DramTier
from llmsys.tiermem.tiers.remote import RemoteTier

__all__ = ["Move", "TierMoves"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Move:
    """A planned demotion: copy ``key`` from tier ``src`` into a slot reserved in ``dst``."""

    key: BlockKey
    """The block (marked moving until published)."""
    src: int
    """Index of the tier it leaves."""
    dst: int
    """Index of the tier it goes to (``src + 1``)."""


class TierMoves:
    """Placement state of a store over ``tiers`` (fastest first) and the moves between them."""

    def __init__(
        self,
        tiers: list[Tier],
        policies: list[EvictionPolicy],
        *,
        block_bytes: int,
        metadata_only: bool,
    ) -> None:
        """Track no blocks yet; ``policies[i]`` picks tier ``i``'s victims."""
        self._lock = threading.RLock()
        # woken whenever a move publishes (read and prefetch wait for moving blocks)
        self._moved = threading.Condition(self._lock)
        self.tiers = tiers
        self._policies = policies
        self._block_bytes = block_bytes
        self._metadata_only = metadata_only
        self._remote_idx = len(tiers) - 1 if isinstance(tiers[-1], RemoteTier) else None
        self._where: dict[BlockKey, int] = {}
        self._pins: dict[BlockKey, int] = {}
        self._reserved = [0] * len(tiers)
        self._leaving = [0] * len(tiers)  # planned moves out of each tier, in flight
        self._storing: set[BlockKey] = set()
        self._moving: set[BlockKey] = set()  # blocks being copied between tiers
        self._reading: dict[BlockKey, int] = {}  # blocks ``read`` is copying out, with count
        # copies run outside the store lock, on any thread: each thread has its own buffers
        self._local = threading.local()
        self._counts = dict.fromkeys(("promotions", "demotions", "dropped", "prefetched"), 0)

    def _is_pinned(self, key: object) -> bool:
        return key in self._pins or key in self._storing or key in self._moving

    def _buffer(self, use: str) -> memoryview | None:
        """This thread's bounce buffer for ``use`` (None in metadata-only mode).

        Per thread, because copies run outside the store lock on several threads; per use,
        because a prefetch holds its block in one while the demotions it needs use another.
        """
        if self._metadata_only:
            return None
        buf: memoryview | None = getattr(self._local, use, None)
        if buf is None:
            buf = aligned_buffer(self._block_bytes)
            setattr(self._local, use, buf)
        return buf

    def _unpin(self, key: BlockKey) -> None:
        count = self._pins.get(key, 0) - 1
        if count > 0:
            self._pins[key] = count
        else:
            self._pins.pop(key, None)

    def _forget_if_gone(self, key: BlockKey, idx: int) -> None:
        if key not in self.tiers[idx] and self._where.get(key) == idx:
            del self._where[key]
            self._policies[idx].remove(key)

    def _room(self, idx: int) -> int:
        """Slots of tier ``idx`` neither used nor reserved, counting those moves will free."""
        return self.tiers[idx].free_blocks + self._leaving[idx] - self._reserved[idx]

    def _claim(self, idx: int, plan: list[Move], dropped: list[BlockKey]) -> bool:
        """Reserve one slot of tier ``idx``, evicting as needed; False if all are pinned.

        Victims going down are only planned (appended to ``plan``, deepest first); the
        caller must :meth:`_run_moves` the plan - without the lock - before it uses the slot,
        and release the reservation (``_reserved[idx] -= 1``) after its put.
        """
        tier = self.tiers[idx]
        while self._room(idx) < 1:
            victim = self._policies[idx].evict(self._is_pinned)
            if victim is None:
                return False
            assert isinstance(victim, BlockKey)
            tier.count_eviction()
            self._evict(victim, idx, plan, dropped)
        self._reserved[idx] += 1
        return True

    def _evict(self, key: BlockKey, idx: int, plan: list[Move], dropped: list[BlockKey]) -> None:
        """Send an evicted block from tier ``idx`` to the next tier (a planned move) or drop
        it now."""
        if idx == self._remote_idx:  # the remote copy goes; a local copy may remain
            self.tiers[idx].delete(key)  # a Redis DEL: the one I/O left under the lock
            if self._where.get(key) == idx:
                self._drop(key, dropped)
            return
        nxt = idx + 1
        if nxt < len(self.tiers):
            if nxt == self._remote_idx and key in self.tiers[nxt]:  # already written through
                self.tiers[idx].delete(key)
                self._counts["demotions"] += 1
                if self._where.get(key) == idx:
                    self._where[key] = nxt
                return
            if self._claim(nxt, plan, dropped):
                self._moving.add(key)
                self._leaving[idx] += 1
                plan.append(Move(key, idx, nxt))
                return
        self.tiers[idx].delete(key)
        if self._where.get(key) == idx:
            self._drop(key, dropped)

    def _drop(self, key: BlockKey, dropped: list[BlockKey]) -> None:
        del self._where[key]
        self._counts["dropped"] += 1
        dropped.append(key)

    def _run_moves(self, plan: Sequence[Move], dropped: list[BlockKey]) -> None:
        """Copy each planned block down (no lock held), then publish it (lock held).

        A move whose copy fails drops its block; either way its source slot is freed, which
        is what the reservation that planned it waits for.
        """
        for move in plan:
            ok = False
            try:
                ok = self._copy_down(move.key, self.tiers[move.src], self.tiers[move.dst])
            except Exception:  # a store bug: never leave a block marked moving
                log.exception("demotion of a block failed")
            with self._lock:
                self._reserved[move.dst] -= 1
                self._leaving[move.src] -= 1
                self._moving.discard(move.key)
                self.tiers[move.src].delete(move.key)
                if ok:
                    self._policies[move.dst].insert(move.key)
                    self._counts["demotions"] += 1
                    if self._where.get(move.key) == move.src:
                        self._where[move.key] = move.dst
                elif self._where.get(move.key) == move.src:
                    self._drop(move.key, dropped)
                self._moved.notify_all()

    def _copy_down(self, key: BlockKey, src: Tier, dst: Tier) -> bool:
        """Copy ``key`` from ``src`` to ``dst`` (zero-copy out of real dram)."""
        data = src.view(key) if isinstance(src, DramTier) else None
        if data is None:
            buf = self._buffer("demote")
            if src.get_into(key, buf) is None:
                return False
            data = buf
        return dst.put(key, data, src.checksum_of(key))

    def _promote(
        self, key: BlockKey, src: int, dst: int, data: memoryview | None, *, reader: bool
    ) -> bool | None:
        """Copy ``key`` (its verified bytes already in ``data``) from tier ``src`` up into
        ``dst``: True if moved, False if ``dst`` is full of pinned blocks, None if the block
        is no longer at ``src``, is moving, or (unless ``reader``) is being read.

        The caller holds a pin on ``key``. The put and the demotions it needs run without
        the store lock.
        """
        plan: list[Move] = []
        dropped: list[BlockKey] = []
        with self._lock:
            if self._where.get(key) != src or key in self._moving:
                return None
            if not reader and key in self._reading:
                return None
            claimed = self._claim(dst, plan, dropped)
            if claimed:
                self._moving.add(key)
        if not claimed:
            # a claim that fails may still have planned a move (while a write's put is
            # in flight the room count is one low): run it, it is owed to the tier
            self._run_moves(plan, dropped)
            return False
        ok = False
        try:
            self._run_moves(plan, dropped)
            # the source verified these bytes against this checksum: no second hash
            ok = self.tiers[dst].put(key, data, self.tiers[src].checksum_of(key))
        finally:
            with self._lock:
                self._reserved[dst] -= 1
                self._moving.discard(key)
                if ok:
                    self._policies[dst].insert(key)
                    if src != self._remote_idx:
                        self.tiers[src].delete(key)
                        self._policies[src].remove(key)
                    self._where[key] = dst
                self._moved.notify_all()
        return ok
