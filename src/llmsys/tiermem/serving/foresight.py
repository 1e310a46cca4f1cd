"""Foresight prefetch: promote the blocks of queued requests before they run.

A waiting request's blocks are known from its tokens, so :class:`ForesightPrefetcher`
looks ``lookahead`` requests past the running one and moves their cached prefixes up the
hierarchy in two pipelined stages, each its own worker thread:

- stage 1 (slow -> middle): blocks on ssd or remote move into cxl (or dram when the store
  has no cxl);
- stage 2 (middle -> dram): blocks on cxl move into dram.

Work is cut into chunks of ``chunk_blocks`` in prefix order, so stage 2 promotes chunk c
while stage 1 reads chunk c+1, and the earliest blocks - the ones the request needs first -
arrive first. Blocks already in dram are never read (the store reports them as
``already``); a request's blocks are pinned from the moment it is planned until the engine
consumes them (``take``) or the request leaves the queue (``cancel``), so a prefetched block
cannot be evicted before use. Stage workers block on queues and completion events; nothing
polls.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from llmsys.tiermem.keys import BlockKey
from llmsys.tiermem.store import LoadHandle, TieredStore
from llmsys.tiermem.tiers.base import TierKind

__all__ = ["ForesightPrefetcher", "ForesightStats"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ForesightStats:
    """Counters of a prefetcher."""

    planned_requests: int = 0
    """Requests whose prefixes were planned."""
    cancelled_requests: int = 0
    """Requests that left the queue before they ran."""
    moved_blocks: int = 0
    """Blocks moved by stage 1 and stage 2 together (one lower-tier read each)."""
    needed_hops: int = 0
    """Tier hops the consumed requests' blocks needed from where they were when planned
    (cxl: 1; ssd/remote: 2 through cxl, 1 without) - the reads a perfect prefetcher makes."""
    stage_moves: dict[str, int] = field(default_factory=dict)
    """Blocks moved per stage name."""


@dataclass(slots=True)
class _Plan:
    request_id: str
    keys: tuple[BlockKey, ...]
    pins: LoadHandle
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    pending_chunks: int = 0


class ForesightPrefetcher:
    """Two-stage pipelined prefetch of queued requests' prefixes."""

    def __init__(self, store: TieredStore, *, lookahead: int = 2, chunk_blocks: int = 8) -> None:
        """Start the stage workers.

        Raises:
            ValueError: ``lookahead`` or ``chunk_blocks`` < 1.
        """
        if lookahead < 1 or chunk_blocks < 1:
            raise ValueError("lookahead and chunk_blocks must be >= 1")
        self.store = store
        self.lookahead = lookahead
        self.chunk_blocks = chunk_blocks
        self.stats = ForesightStats()
        kinds = [t.kind for t in store.tiers]
        self._middle = TierKind.CXL if TierKind.CXL in kinds else TierKind.DRAM
        self._plans: dict[str, _Plan] = {}
        self._lock = threading.Lock()
        self._stage1: queue.Queue[tuple[_Plan, tuple[BlockKey, ...]] | None] = queue.Queue()
        self._stage2: queue.Queue[tuple[_Plan, tuple[BlockKey, ...]] | None] = queue.Queue()
        self._threads = [
            threading.Thread(
                target=self._worker,
                args=(self._stage1, self._middle, self._stage2),
                name="foresight-stage1",
                daemon=True,
            ),
            threading.Thread(
                target=self._worker,
                args=(self._stage2, TierKind.DRAM, None),
                name="foresight-stage2",
                daemon=True,
            ),
        ]
        for t in self._threads:
            t.start()

    # -- engine-facing -------------------------------------------------------------------
    def plan(self, upcoming: Sequence[tuple[str, Sequence[BlockKey]]]) -> None:
        """Plan the first ``lookahead`` of ``upcoming`` (request id, prompt block keys).

        Requests already planned are skipped; planned requests no longer among the first
        ``lookahead`` are cancelled (they left the queue or were reordered).
        """
        window = list(upcoming[: self.lookahead])
        wanted = {rid for rid, _ in window}
        for rid in [r for r in self._plans if r not in wanted]:
            self.cancel(rid)
        for rid, keys in window:
            if rid in self._plans:
                continue
            pins = self.store.prepare_load(keys)  # pins the cached prefix wherever it is
            plan = _Plan(rid, pins.keys, pins)
            chunks = [
                pins.keys[i : i + self.chunk_blocks]
                for i in range(0, len(pins.keys), self.chunk_blocks)
            ]
            plan.pending_chunks = len(chunks)
            with self._lock:
                self._plans[rid] = plan
            self.stats.planned_requests += 1
            if not chunks:
                plan.done.set()
            for chunk in chunks:
                self._stage1.put((plan, chunk))

    def take(self, request_id: str) -> LoadHandle | None:
        """The request is about to run: stop tracking it and hand over its pins.

        The caller releases them with ``store.complete_load`` once its own load has pinned
        the blocks. Returns None when the request was never planned.
        """
        with self._lock:
            plan = self._plans.pop(request_id, None)
        if plan is None:
            return None
        plan.cancelled.set()  # remaining chunks are the engine's own load's business now
        self.stats.needed_hops += sum(self._hops(t) for t in plan.pins.tiers)
        return plan.pins

    def _hops(self, tier: TierKind) -> int:
        if tier is TierKind.DRAM:
            return 0
        if tier is self._middle:
            return 1
        return 2 if self._middle is TierKind.CXL else 1

    def cancel(self, request_id: str) -> None:
        """The request left the queue: drop its pending work and unpin its blocks."""
        with self._lock:
            plan = self._plans.pop(request_id, None)
        if plan is None:
            return
        plan.cancelled.set()
        self.stats.cancelled_requests += 1
        self.store.complete_load(plan.pins)

    def wait_idle(self, request_id: str, timeout_s: float | None = None) -> bool:
        """Wait until ``request_id``'s planned chunks have passed both stages."""
        plan = self._plans.get(request_id)
        return True if plan is None else plan.done.wait(timeout_s)

    def close(self) -> None:
        """Stop the workers and release every pin."""
        for rid in list(self._plans):
            self.cancel(rid)
        self._stage1.put(None)
        for t in self._threads:
            t.join(timeout=10)

    # -- stage workers -------------------------------------------------------------------
    def _worker(
        self,
        inbox: queue.Queue[tuple[_Plan, tuple[BlockKey, ...]] | None],
        target: TierKind,
        outbox: queue.Queue[tuple[_Plan, tuple[BlockKey, ...]] | None] | None,
    ) -> None:
        name = "stage1" if outbox is not None else "stage2"
        while True:
            item = inbox.get()
            if item is None:
                if outbox is not None:
                    outbox.put(None)
                return
            plan, chunk = item
            if not plan.cancelled.is_set():
                try:
                    handle = self.store.prefetch(chunk, target)
                    handle.wait()
                    self.stats.moved_blocks += handle.moved_blocks
                    self.stats.stage_moves[name] = (
                        self.stats.stage_moves.get(name, 0) + handle.moved_blocks
                    )
                except Exception:  # prefetch is advisory: never take the engine down
                    log.exception("foresight %s failed for %s", name, plan.request_id)
            if outbox is not None and target is not TierKind.DRAM:
                outbox.put((plan, chunk))
            else:
                with self._lock:
                    plan.pending_chunks -= 1
                    if plan.pending_chunks <= 0:
                        plan.done.set()
