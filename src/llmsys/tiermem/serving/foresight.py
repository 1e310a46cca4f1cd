"""Foresight prefetch: promote the blocks of queued requests before they run.

A waiting request's blocks are known from its tokens, so foresight looks ``lookahead``
requests past the running one and moves their cached prefixes up the hierarchy in two
pipelined stages:

- stage 1 (slow -> middle): blocks on ssd or remote move into cxl (or dram when the store
  has no cxl, in which case there is no stage 2);
- stage 2 (middle -> dram): blocks on cxl move into dram.

Work is cut into chunks of ``chunk_blocks`` in prefix order, so stage 2 promotes chunk c
while stage 1 reads chunk c+1, and the earliest blocks - the ones the request needs first -
arrive first. Blocks already in dram are never read (the store reports them as
``already``); a request's blocks are pinned from the moment it is planned until the engine
consumes them (``take``) or the request leaves the queue (``cancel``), so a prefetched block
cannot be evicted before use.

Two layers, so that real runs and the simulator make the same decisions:

- :class:`ForesightPlanner` - no threads, no waiting of its own: which requests to plan
  or cancel, which keys to pin, how they are cut into :class:`ChunkJob` s and in which
  stage and order they run; :meth:`ForesightPlanner.run` performs one job through
  ``TieredStore.prefetch`` and returns the follow-up job. The simulator
  (:mod:`llmsys.tiermem.sim`) schedules these jobs on simulated stage lanes.
- :class:`ForesightPrefetcher` - the real engine's runner: one worker thread per stage,
  blocking on queues and completion events (nothing polls).
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

__all__ = ["ChunkJob", "ForesightPlanner", "ForesightPrefetcher", "ForesightStats"]

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


@dataclass(frozen=True, slots=True)
class ChunkJob:
    """One chunk of one planned request, due in one stage."""

    plan: _Plan
    """The request it belongs to (its ``cancelled`` event says whether to skip it)."""
    keys: tuple[BlockKey, ...]
    """The chunk's keys, in prefix order (``[<= chunk_blocks]``)."""
    stage: int
    """0 for stage 1, 1 for stage 2."""

    @property
    def request_id(self) -> str:
        """Id of the request the chunk belongs to."""
        return self.plan.request_id


class ForesightPlanner:
    """The decisions of foresight prefetch, without threads (see the module docstring)."""

    def __init__(self, store: TieredStore, *, lookahead: int = 2, chunk_blocks: int = 8) -> None:
        """Raises: ValueError: ``lookahead`` or ``chunk_blocks`` < 1."""
        if lookahead < 1 or chunk_blocks < 1:
            raise ValueError("lookahead and chunk_blocks must be >= 1")
        self.store = store
        self.lookahead = lookahead
        self.chunk_blocks = chunk_blocks
        self.stats = ForesightStats()
        kinds = [t.kind for t in store.tiers]
        middle = TierKind.CXL if TierKind.CXL in kinds else TierKind.DRAM
        self.middle = middle
        """Target of stage 1: cxl when the store has one, else dram."""
        self.stage_targets: tuple[TierKind, ...] = (
            (middle, TierKind.DRAM) if middle is not TierKind.DRAM else (TierKind.DRAM,)
        )
        """Target tier of each stage, in pipeline order."""
        self._plans: dict[str, _Plan] = {}
        self._lock = threading.Lock()

    def plan(self, upcoming: Sequence[tuple[str, Sequence[BlockKey]]]) -> list[ChunkJob]:
        """Plan the first ``lookahead`` of ``upcoming`` (request id, prompt block keys).

        Requests already planned are skipped; planned requests no longer among the first
        ``lookahead`` are cancelled. Returns the new requests' stage-1 jobs, in the order
        they should run.
        """
        window = list(upcoming[: self.lookahead])
        wanted = {rid for rid, _ in window}
        for rid in [r for r in self._plans if r not in wanted]:
            self.cancel(rid)
        jobs: list[ChunkJob] = []
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
            jobs.extend(ChunkJob(plan, chunk, 0) for chunk in chunks)
        return jobs

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
        if tier is self.middle:
            return 1
        return 2 if self.middle is TierKind.CXL else 1

    def cancel(self, request_id: str) -> None:
        """The request left the queue: drop its pending work and unpin its blocks."""
        with self._lock:
            plan = self._plans.pop(request_id, None)
        if plan is None:
            return
        plan.cancelled.set()
        self.stats.cancelled_requests += 1
        self.store.complete_load(plan.pins)

    def is_idle(self, request_id: str) -> threading.Event | None:
        """The event set once ``request_id``'s chunks have passed every stage (None: not
        planned)."""
        plan = self._plans.get(request_id)
        return None if plan is None else plan.done

    def planned(self) -> list[str]:
        """Ids of the requests planned and not yet taken or cancelled."""
        return list(self._plans)

    def run(self, job: ChunkJob) -> ChunkJob | None:
        """Perform ``job`` through ``store.prefetch`` (waiting for it) unless its request was
        taken or cancelled; return the job for the next stage, or None after the last.

        Never raises for a failed prefetch (prefetch is advisory: it is logged).
        """
        target = self.stage_targets[job.stage]
        name = f"stage{job.stage + 1}"
        if not job.plan.cancelled.is_set():
            try:
                handle = self.store.prefetch(job.keys, target)
                handle.wait()
                self.stats.moved_blocks += handle.moved_blocks
                self.stats.stage_moves[name] = (
                    self.stats.stage_moves.get(name, 0) + handle.moved_blocks
                )
            except Exception:  # prefetch is advisory: never take the engine down
                log.exception("foresight %s failed for %s", name, job.request_id)
        if job.stage + 1 < len(self.stage_targets):
            return ChunkJob(job.plan, job.keys, job.stage + 1)
        with self._lock:
            job.plan.pending_chunks -= 1
            if job.plan.pending_chunks <= 0:
                job.plan.done.set()
        return None


class ForesightPrefetcher:
    """Two-stage pipelined prefetch of queued requests' prefixes, one thread per stage."""

    def __init__(self, store: TieredStore, *, lookahead: int = 2, chunk_blocks: int = 8) -> None:
        """Start the stage workers.

        Raises:
            ValueError: ``lookahead`` or ``chunk_blocks`` < 1.
        """
        self.planner = ForesightPlanner(store, lookahead=lookahead, chunk_blocks=chunk_blocks)
        self.store = store
        self.lookahead = lookahead
        self.chunk_blocks = chunk_blocks
        self.stats = self.planner.stats
        stages = len(self.planner.stage_targets)
        self._queues: list[queue.Queue[ChunkJob | None]] = [queue.Queue() for _ in range(stages)]
        self._threads = [
            threading.Thread(
                target=self._worker, args=(s,), name=f"foresight-stage{s + 1}", daemon=True
            )
            for s in range(stages)
        ]
        for t in self._threads:
            t.start()

    # -- engine-facing -------------------------------------------------------------------
    def plan(self, upcoming: Sequence[tuple[str, Sequence[BlockKey]]]) -> None:
        """Plan the first ``lookahead`` of ``upcoming`` (request id, prompt block keys).

        Requests already planned are skipped; planned requests no longer among the first
        ``lookahead`` are cancelled (they left the queue or were reordered).
        """
        for job in self.planner.plan(upcoming):
            self._queues[0].put(job)

    def take(self, request_id: str) -> LoadHandle | None:
        """The request is about to run: stop tracking it and hand over its pins.

        The caller releases them with ``store.complete_load`` once its own load has pinned
        the blocks. Returns None when the request was never planned.
        """
        return self.planner.take(request_id)

    def cancel(self, request_id: str) -> None:
        """The request left the queue: drop its pending work and unpin its blocks."""
        self.planner.cancel(request_id)

    def wait_idle(self, request_id: str, timeout_s: float | None = None) -> bool:
        """Wait until ``request_id``'s planned chunks have passed both stages."""
        done = self.planner.is_idle(request_id)
        return True if done is None else done.wait(timeout_s)

    def close(self) -> None:
        """Stop the workers and release every pin."""
        for rid in self.planner.planned():
            self.planner.cancel(rid)
        self._queues[0].put(None)
        for t in self._threads:
            t.join(timeout=10)

    # -- stage workers -------------------------------------------------------------------
    def _worker(self, stage: int) -> None:
        inbox = self._queues[stage]
        outbox = self._queues[stage + 1] if stage + 1 < len(self._queues) else None
        while True:
            job = inbox.get()
            if job is None:
                if outbox is not None:
                    outbox.put(None)
                return
            follow = self.planner.run(job)
            if follow is not None and outbox is not None:
                outbox.put(follow)
