"""``TieredStore``: one block store over an ordered list of tiers (protocol in ``__init__``).

Placement: local tiers (dram, cxl, ssd) are exclusive - a block lives in exactly one of
them and ``_where`` maps its key to that tier, so ``lookup`` is one dict probe per block.
The remote tier is inclusive: new blocks are written through to it in the background and
stay there when a local copy moves. Evicting from tier ``i`` demotes the victim to tier
``i+1`` (cascading), and drops it from the store only past the last tier. A hit in a slower
tier is promoted to dram when ``promote_on_hit`` is set.

Concurrency: metadata is guarded by one store lock; ``lookup`` reads without it (dict
reads are atomic). No block's bytes are copied under the lock: moves between tiers are
planned, copied and published in three steps (:mod:`llmsys.tiermem.store_moves`), and
``write`` copies into a reserved slot.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from llmsys.tiermem.clock import Clock, MonotonicClock
from llmsys.tiermem.errors import BlockInputError, HandleStateError, TierConfigError
from llmsys.tiermem.keys import BlockKey, Namespace
from llmsys.tiermem.policy import make_policy
from llmsys.tiermem.prefetch import PrefetchHandle
from llmsys.tiermem.store_moves import Move, TierMoves
from llmsys.tiermem.store_types import (
    LoadHandle,
    PrefixHit,
    StoreConfig,
    StoreHandle,
    StoreStats,
)
from llmsys.tiermem.tiers import open_tier
from llmsys.tiermem.tiers.base import Tier, TierKind
from llmsys.tiermem.tiers.dram import DramTier
from llmsys.tiermem.tiers.remote import RemoteTier

__all__ = ["LoadHandle", "PrefixHit", "StoreConfig", "StoreHandle", "StoreStats", "TieredStore"]

log = logging.getLogger(__name__)


class TieredStore(TierMoves):
    """Prefix-KV block store over ordered tiers (see the package docstring for protocol)."""

    def __init__(
        self,
        namespace: Namespace,
        config: StoreConfig,
        *,
        clock: Clock | None = None,
        executor: Executor | None = None,
    ) -> None:
        """Open every tier. ``executor`` runs prefetch and write-through jobs.

        Raises:
            TierConfigError, CapacityError: bad configuration.
            TierUnavailableError: a local tier's resource cannot be opened.
        """
        self.namespace = namespace
        self.config = config
        self.block_bytes = namespace.block_bytes
        self.clock = clock if clock is not None else MonotonicClock()
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="itme-prefetch")
        meta = config.metadata_only
        self.tiers: list[Tier] = []
        try:
            for tier_config in config.tiers:
                self.tiers.append(
                    open_tier(
                        tier_config,
                        block_bytes=self.block_bytes,
                        clock=self.clock,
                        metadata_only=meta,
                    )
                )
        except BaseException:
            for tier in self.tiers:
                tier.close()
            raise
        policies = [
            make_policy(c.policy, t.capacity_blocks)
            for c, t in zip(config.tiers, self.tiers, strict=True)
        ]
        super().__init__(self.tiers, policies, block_bytes=self.block_bytes, metadata_only=meta)
        for i, tier in enumerate(self.tiers):  # persistent tiers bring their blocks back
            for key in tier.keys():  # noqa: SIM118 - Tier.keys() is a locked snapshot
                if key[:8] == namespace.id_bytes and key not in self._where:
                    self._where[key] = i
                    self._policies[i].insert(key)

    @property
    def dram(self) -> DramTier:
        """The staging dram tier."""
        tier = self.tiers[0]
        assert isinstance(tier, DramTier)
        return tier

    def tier(self, kind: TierKind) -> Tier | None:
        """The tier of ``kind``, or None if the store has none."""
        return next((t for t in self.tiers if t.kind is kind), None)

    def _check_keys(self, keys: Sequence[bytes]) -> list[BlockKey]:
        return [self.namespace.check_key(k) for k in keys]

    # ---- lookup -----------------------------------------------------------------------

    def lookup(self, keys: Sequence[BlockKey]) -> PrefixHit:
        """Longest cached prefix of ``keys`` and the tier of each block. Pins nothing.

        Raises:
            BlockInputError, NamespaceMismatchError: a key is malformed or foreign.
        """
        prefix = self.namespace.id_bytes
        where = self._where
        found: list[int] = []
        for key in keys:
            if key[:8] != prefix or len(key) != 24:
                self.namespace.check_key(key)  # raises the precise error
            idx = where.get(key)
            if idx is None:
                break
            found.append(idx)
        if self._remote_idx is not None and len(found) < len(keys):
            remote = self.tiers[self._remote_idx]
            assert isinstance(remote, RemoteTier)
            rest = list(keys[len(found) :])
            count = remote.discover(rest)
            with self._lock:
                for key in rest[:count]:
                    if key not in self._where:
                        self._where[key] = self._remote_idx
                        self._policies[self._remote_idx].insert(key)
            found.extend(self._where.get(k, self._remote_idx) for k in rest[:count])
        kinds = tuple(self.tiers[i].kind for i in found)
        return PrefixHit(num_blocks=len(found), tiers=kinds)

    # ---- load -------------------------------------------------------------------------

    def prepare_load(self, keys: Sequence[BlockKey]) -> LoadHandle:
        """Pin the longest cached prefix of ``keys``; pinned blocks are never evicted.

        Raises:
            BlockInputError, NamespaceMismatchError: a key is malformed or foreign.
        """
        hit = self.lookup(keys)
        with self._lock:
            pinned: list[BlockKey] = []
            for key in keys[: hit.num_blocks]:
                idx = self._where.get(key)
                if idx is None:  # evicted between lookup and pinning
                    break
                self._pins[key] = self._pins.get(key, 0) + 1
                self._policies[idx].touch(key)
                pinned.append(key)
            tiers = tuple(self.tiers[self._where[k]].kind for k in pinned)
        return LoadHandle(keys=tuple(pinned), tiers=tiers)

    def read(self, handle: LoadHandle, outs: Sequence[memoryview | None]) -> int:
        """Copy the handle's blocks into ``outs`` (each ``[block_bytes]``); return how many
        leading blocks were loaded. A block that fails verification (or whose tier is
        unreachable) ends the prefix: the caller recomputes from there. Never raises for
        tier failures.

        Raises:
            HandleStateError: the handle was completed.
            BlockInputError: ``outs`` is not one buffer per handle key.
            BlockSizeError: a buffer is not ``block_bytes`` long.
        """
        if handle.completed:
            raise HandleStateError("read() on a completed load handle")
        if len(outs) != len(handle.keys):
            raise BlockInputError(f"need {len(handle.keys)} buffers, got {len(outs)}")
        keys = handle.keys
        by_tier: dict[int, list[int]] = {}
        with self._lock:
            # pinned blocks never start moving, but one may be landing (a demotion planned
            # before it was pinned, or a prefetch promoting it): wait until it has landed
            self._moved.wait_for(lambda: self._moving.isdisjoint(keys))
            for i, key in enumerate(keys):
                self._reading[key] = self._reading.get(key, 0) + 1
                where = self._where.get(key)
                if where is not None:  # else it vanished since pinning (corrupt elsewhere)
                    by_tier.setdefault(where, []).append(i)
        ok = [False] * len(keys)
        try:
            for idx, positions in by_tier.items():
                got = self.tiers[idx].get_many_into(
                    [keys[p] for p in positions], [outs[p] for p in positions]
                )
                for p, n in zip(positions, got, strict=True):
                    ok[p] = n is not None
                    if n is None:
                        with self._lock:
                            self._forget_if_gone(keys[p], idx)
                    elif (
                        idx > 0
                        and self.config.promote_on_hit
                        and self._promote(keys[p], idx, 0, outs[p], reader=True)
                    ):
                        with self._lock:
                            self._counts["promotions"] += 1
        finally:
            with self._lock:
                for key in keys:
                    count = self._reading.pop(key) - 1
                    if count:
                        self._reading[key] = count
        loaded = 0
        while loaded < len(ok) and ok[loaded]:
            loaded += 1
        return loaded

    def complete_load(self, handle: LoadHandle) -> None:
        """Unpin the handle's blocks; they become evictable again.

        Raises:
            HandleStateError: the handle was already completed.
        """
        if handle.completed:
            raise HandleStateError("complete_load() called twice")
        with self._lock:
            handle.completed = True
            for key in handle.keys:
                self._unpin(key)

    # ---- store ------------------------------------------------------------------------

    def prepare_store(self, keys: Sequence[BlockKey]) -> StoreHandle:
        """Reserve dram slots for the keys not yet cached, evicting/demoting as needed.

        Keys already cached or being stored are skipped; if dram is full of pinned blocks
        the remaining keys are skipped too (the handle says which keys to write).

        Raises:
            BlockInputError, NamespaceMismatchError: a key is malformed or foreign.
        """
        checked = self._check_keys(keys)
        chosen: list[BlockKey] = []
        dropped: list[BlockKey] = []
        plan: list[Move] = []
        with self._lock:
            for key in checked:
                if key in self._where or key in self._storing:  # cached, or in a handle
                    continue
                if not self._claim(0, plan, dropped):
                    break
                self._storing.add(key)
                chosen.append(key)
        self._run_moves(plan, dropped)  # the demotions that free the reserved slots
        return StoreHandle(keys=tuple(chosen), evicted=tuple(dropped))

    def write(self, handle: StoreHandle, key: BlockKey, data: memoryview | None) -> None:
        """Copy ``data`` (``[block_bytes]``; None in metadata-only mode) into ``key``'s slot.

        Raises:
            HandleStateError: completed handle, or ``key`` not in ``handle.keys``.
            BlockSizeError: ``data`` is not ``block_bytes`` long.
        """
        if handle.completed or key not in handle.keys:
            raise HandleStateError("write() of a key this open store handle does not cover")
        # The copy runs without the store lock: the slot is reserved, the key is pinned
        # (storing) and unpublished, so nobody else reads or takes it. The reservation is
        # released after the put, so the room count never overstates the free slots.
        if not self.dram.put(key, data):
            raise HandleStateError("dram slot lost while writing (store bug)")
        with self._lock:
            self._reserved[0] -= 1
            handle.written.add(key)

    def complete_store(self, handle: StoreHandle, success: bool = True) -> None:
        """Publish the written blocks (visible to ``lookup``) or, with ``success=False``,
        discard them; release the remaining reservations.

        Raises:
            HandleStateError: the handle was already completed.
        """
        if handle.completed:
            raise HandleStateError("complete_store() called twice")
        published: list[BlockKey] = []
        with self._lock:
            handle.completed = True
            for key in handle.keys:
                self._storing.discard(key)
                if key not in handle.written:
                    self._reserved[0] -= 1
                elif success:
                    self._where[key] = 0
                    self._policies[0].insert(key)
                    published.append(key)
                else:
                    self.dram.delete(key)
        if published and self._remote_idx is not None and self.config.write_through_remote:
            with self._lock:
                for key in published:
                    self._pins[key] = self._pins.get(key, 0) + 1
            self._executor.submit(self._write_through, published)

    def _write_through(self, keys: list[BlockKey]) -> None:
        """Background job: copy freshly stored (pinned) dram blocks to the remote tier."""
        assert self._remote_idx is not None
        r = self._remote_idx
        remote = self.tiers[r]
        reserved = 0
        try:
            with self._lock:
                dropped: list[BlockKey] = []
                plan: list[Move] = []  # stays empty: remote victims are deleted, not moved
                todo = [k for k in keys if k in self.dram and k not in remote]
                for _ in todo:
                    if not self._claim(r, plan, dropped):
                        break
                    reserved += 1
                todo = todo[:reserved]
            assert not plan
            datas = [self.dram.view(k) for k in todo]
            with self._lock:
                self._reserved[r] -= reserved  # put_many takes the slots made free above
                reserved = 0
            remote.put_many(todo, datas)
            with self._lock:
                for key in todo:
                    if key in remote:
                        self._policies[r].insert(key)
        except Exception:
            log.exception("remote write-through failed")
        finally:
            with self._lock:
                self._reserved[r] -= reserved
                for key in keys:
                    self._unpin(key)

    # ---- prefetch -----------------------------------------------------------------------

    def prefetch(
        self,
        keys: Sequence[BlockKey],
        target: TierKind = TierKind.DRAM,
        deadline_s: float | None = None,
    ) -> PrefetchHandle:
        """Start moving ``keys`` into ``target`` (or faster); return at once.

        ``deadline_s`` is a time on the store's clock. The handle's ``done`` event is set
        when the job ends; the job never raises (failures go to ``handle.error``).

        Raises:
            TierConfigError: the store has no ``target`` tier.
            BlockInputError, NamespaceMismatchError: a key is malformed or foreign.
        """
        target_idx = next((i for i, t in enumerate(self.tiers) if t.kind is target), None)
        if target_idx is None or (self._remote_idx is not None and target_idx == self._remote_idx):
            raise TierConfigError(f"store has no local {target.value} tier to prefetch into")
        handle = PrefetchHandle(tuple(self._check_keys(keys)), target, deadline_s)
        self._executor.submit(self._run_prefetch, handle, target_idx)
        return handle

    def _run_prefetch(self, handle: PrefetchHandle, target_idx: int) -> None:
        # Blocks brought up stay pinned until the job ends, so a prefetch larger than its
        # target never evicts its own earlier blocks; it stops when the target is full.
        held: list[BlockKey] = []
        try:
            for key in handle.keys:
                if handle.deadline_s is not None and self.clock.now() > handle.deadline_s:
                    handle.expired = True
                    break
                with self._lock:
                    # a block moving now is wanted where it lands: wait for it
                    self._moved.wait_for(lambda k=key: k not in self._moving)  # type: ignore[misc]
                    src = self._where.get(key)
                    if src is None:
                        handle.missing_blocks += 1
                        continue
                    self._pins[key] = self._pins.get(key, 0) + 1
                    held.append(key)
                    # a block ``read`` is copying out is its reader's to promote
                    if src <= target_idx or key in self._reading:
                        handle.already_blocks += 1
                        continue
                buf = self._buffer("prefetch")
                got = self.tiers[src].get_into(key, buf)
                if got is None:
                    with self._lock:
                        self._forget_if_gone(key, src)
                    handle.missing_blocks += 1
                    continue
                moved = self._promote(key, src, target_idx, buf, reader=False)
                if moved is None:  # read, promoted or moved meanwhile
                    handle.already_blocks += 1
                elif moved:
                    handle.moved_blocks += 1
                    with self._lock:
                        self._counts["prefetched"] += 1
                else:
                    handle.no_room = True
                    break
        except Exception as exc:
            log.exception("prefetch failed")
            handle.error = f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                for key in held:
                    self._unpin(key)
            handle.finished_at_s = self.clock.now()
            handle.done.set()

    # ---- reporting ------------------------------------------------------------------

    def stats(self) -> StoreStats:
        """Snapshot of store and per-tier counters."""
        with self._lock:
            return StoreStats(tiers=tuple(t.stats() for t in self.tiers), **self._counts)

    def describe(self) -> dict[str, Any]:
        """JSON-able description of the store and its tiers (recorded with results)."""
        return {
            "namespace_id": f"{self.namespace.namespace_id:#018x}",
            "block_bytes": self.block_bytes,
            "metadata_only": self.config.metadata_only,
            "tiers": [t.describe() for t in self.tiers],
        }

    def close(self) -> None:
        """Finish background jobs and close every tier."""
        if self._own_executor:
            self._executor.shutdown(wait=True)
        for tier in self.tiers:
            tier.close()

    def __enter__(self) -> TieredStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
