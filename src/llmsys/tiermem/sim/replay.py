"""Discrete-event replay of a request queue through the real store, policies and foresight.

One replay = one cache configuration at one ratio. It builds a real
:class:`~llmsys.tiermem.TieredStore` (``metadata_only=True``, tiers sized by
:func:`~llmsys.tiermem.serving.compare.tier_configs`, link costs from the profile) on a
:class:`LaneClock`, and walks the queue the way :class:`~llmsys.tiermem.serving.ServingEngine`
and :class:`~llmsys.tiermem.serving.TieredKVConnector` do: plan foresight for the next
requests, ``lookup`` -> ``prepare_load`` -> ``take`` -> ``read`` -> prefill -> decode ->
``prepare_store``/``write``/``complete_store`` rounds -> ``complete_load``. Every store
call runs the store's own code; tier transfers wait their profile cost on the clock, and
compute waits the profile's prefill/decode time.

Concurrency is modelled with *lanes*: the engine, each foresight stage and the saves (the
real engine stores a request's blocks on a thread while it decodes) each keep their own
time on a :class:`LaneClock`. Background
work (a :class:`~llmsys.tiermem.serving.foresight.ChunkJob` run by the real
:class:`~llmsys.tiermem.serving.foresight.ForesightPlanner`, or a save) is queued with a
ready time and executed - store state changes included - when the engine reaches that time,
earliest start first, so a replay is deterministic. Lanes do not share bandwidth: a
prefetch and the engine's own load overlap freely (a stated limitation).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from llmsys.tiermem.clock import ManualClock
from llmsys.tiermem.keys import BlockKey
from llmsys.tiermem.prefetch import InlineExecutor
from llmsys.tiermem.serving.compare import CacheConfig, tier_configs
from llmsys.tiermem.serving.foresight import ChunkJob, ForesightPlanner, ForesightStats
from llmsys.tiermem.sim.profile import HardwareProfile, ProfileError
from llmsys.tiermem.sim.workload import SimRequest
from llmsys.tiermem.store import StoreConfig, StoreStats, TieredStore
from llmsys.tiermem.tiers import CxlBackend, CxlConfig, DramConfig, SsdConfig, TierConfig
from llmsys.tiermem.tiers.base import TierKind

__all__ = ["LaneClock", "ReplayOptions", "SimRequestResult", "SimRun", "replay"]

ENGINE_LANE = "engine"


class LaneClock:
    """A :class:`~llmsys.tiermem.Clock` with one :class:`ManualClock` per lane; ``now`` /
    ``sleep`` act on the active lane (the engine's unless inside :meth:`lane`)."""

    def __init__(self) -> None:
        self._lanes: dict[str, ManualClock] = {ENGINE_LANE: ManualClock()}
        self._active = self._lanes[ENGINE_LANE]

    def now(self) -> float:
        """Time of the active lane, seconds."""
        return self._active.now()

    def sleep(self, duration_s: float) -> None:
        """Advance the active lane by ``duration_s``."""
        self._active.sleep(duration_s)

    def sleep_until(self, deadline_s: float) -> None:
        """Advance the active lane to ``deadline_s`` if it lies ahead."""
        self._active.sleep_until(deadline_s)

    def time_of(self, lane: str) -> float:
        """Time of ``lane`` (0 for a lane never used)."""
        clock = self._lanes.get(lane)
        return clock.now() if clock is not None else 0.0

    @contextlib.contextmanager
    def lane(self, name: str, start_s: float) -> Iterator[None]:
        """Make ``name`` the active lane, starting no earlier than ``start_s``."""
        clock = self._lanes.setdefault(name, ManualClock())
        clock.sleep_until(start_s)
        previous, self._active = self._active, clock
        try:
            yield
        finally:
            self._active = previous


Job = Callable[[], "list[tuple[str, Job]]"]
"""Background work: runs on its lane, returns follow-up (lane, job) pairs."""


class _Lanes:
    """Background lanes: FIFO per lane, each job starts at max(lane free, ready time)."""

    def __init__(self, clock: LaneClock) -> None:
        self.clock = clock
        self.queues: dict[str, collections.deque[tuple[float, Job]]] = {}

    def submit(self, lane: str, ready_s: float, job: Job) -> None:
        self.queues.setdefault(lane, collections.deque()).append((ready_s, job))

    def run_until(self, until_s: float) -> None:
        """Run every queued job that starts by ``until_s``, earliest start first."""
        while True:
            best: tuple[float, str] | None = None
            for lane, q in self.queues.items():
                if q:
                    start = max(self.clock.time_of(lane), q[0][0])
                    if best is None or start < best[0]:
                        best = (start, lane)
            if best is None or best[0] > until_s:
                return
            start, lane = best
            _, job = self.queues[lane].popleft()
            with self.clock.lane(lane, start):
                follow = job()
                end = self.clock.now()
            for next_lane, next_job in follow:
                self.submit(next_lane, end, next_job)


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """Knobs of a replay beyond the profile."""

    lookahead: int = 2
    """Requests of foresight look-ahead (the prefetch depth; itme only)."""
    chunk_blocks: int = 8
    """Blocks per foresight chunk."""
    cxl_factor: float = 2.0
    """cxl capacity = ``cxl_factor`` x dram (itme); 0: no cxl tier."""
    async_saves: bool | None = None
    """Saves (and the demotions they trigger) run on their own lane, overlapping the decode
    as in the real engine; True: write-back, the engine never waits for them (False: it
    waits at the end of the request, as ``wait_for_save``); None: the profile's."""

    def __post_init__(self) -> None:
        """Raises: ProfileError: lookahead or chunk_blocks < 1, or cxl_factor < 0."""
        if self.lookahead < 1 or self.chunk_blocks < 1:
            raise ProfileError("lookahead and chunk_blocks must be >= 1")
        if not self.cxl_factor >= 0:
            raise ProfileError("cxl_factor must be >= 0")


@dataclass(frozen=True, slots=True)
class SimRequestResult:
    """Simulated outcome of one request."""

    request_id: str
    """Which request."""
    ttft_s: float
    """Start of the request to its first token (simulated)."""
    e2e_s: float
    """Start of the request to its last token (simulated)."""
    prompt_tokens: int
    """Prompt length."""
    cached_tokens: int
    """Prompt tokens whose KV came from the store."""
    hit_tiers: tuple[TierKind, ...]
    """Tier of each used cached block when pinned."""


@dataclass(frozen=True, slots=True)
class SimRun:
    """Simulated outcome of one configuration at one ratio."""

    config: CacheConfig
    """Which configuration."""
    ratio: int
    """Footprint / dram ratio (1 for ratio-independent configurations)."""
    results: tuple[SimRequestResult, ...]
    """Per request, in queue order."""
    wall_s: float
    """Simulated time of the whole queue."""
    store_stats: StoreStats | None
    """The real store's counters at the end (None: recompute)."""
    foresight: ForesightStats | None
    """The real planner's counters (itme only)."""
    save_lag_s: float = 0.0
    """Largest lag of the save lane behind the engine when a save was queued."""

    @property
    def throughput_rps(self) -> float:
        """Requests per simulated second."""
        return len(self.results) / self.wall_s if self.wall_s > 0 else 0.0


def _store_tiers(
    config: CacheConfig, profile: HardwareProfile, footprint: int, ratio: int, cxl_factor: float
) -> tuple[TierConfig, ...]:
    base = tier_configs(config, footprint, ratio, profile.block_bytes, Path(tempfile.gettempdir()))
    out: list[TierConfig] = []
    dram_bytes = 0
    for tier in base:
        kind = {DramConfig: TierKind.DRAM, CxlConfig: TierKind.CXL, SsdConfig: TierKind.SSD}[
            type(tier)
        ]
        model = profile.tiers.get(kind)
        if model is None:
            raise ProfileError(f"profile {profile.name} has no [tiers.{kind.value}] link")
        if isinstance(tier, DramConfig):
            dram_bytes = tier.capacity_bytes
            out.append(dataclasses.replace(tier, model=model))
        elif isinstance(tier, CxlConfig):
            cxl_bytes = int(cxl_factor * dram_bytes)
            if cxl_bytes >= profile.block_bytes:
                out.append(
                    dataclasses.replace(
                        tier,
                        capacity_bytes=cxl_bytes,
                        backend=CxlBackend.EMULATED,
                        bandwidth_bytes_per_s=model.read_bytes_per_s,
                        latency_s=model.latency_s,
                    )
                )
        elif isinstance(tier, SsdConfig):
            out.append(dataclasses.replace(tier, model=model))
    return tuple(out)


def _save(store: TieredStore, keys: Sequence[BlockKey], first_block: int) -> int:
    """``TieredKVConnector.save_kv``'s store calls, without bytes: returns blocks stored."""
    stored = 0
    todo = list(keys[first_block:])
    while todo:
        handle = store.prepare_store(todo)
        if not handle.keys:
            store.complete_store(handle)
            break
        for key in handle.keys:
            store.write(handle, key, None)
        store.complete_store(handle)
        stored += len(handle.keys)
        done = set(handle.keys)
        todo = [k for k in todo[todo.index(handle.keys[-1]) + 1 :] if k not in done]
    return stored


def replay(
    requests: Sequence[SimRequest],
    profile: HardwareProfile,
    config: CacheConfig,
    *,
    ratio: int = 1,
    footprint_bytes: int,
    options: ReplayOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> SimRun:
    """Replay ``requests`` under ``config`` at ``ratio``; see the module docstring.

    Raises:
        ProfileError: the profile lacks a tier link the configuration needs, or a
            request's keys do not match the profile's block size.
    """
    options = options if options is not None else ReplayOptions()
    clock = LaneClock()
    bt = profile.block_tokens
    store: TieredStore | None = None
    planner: ForesightPlanner | None = None
    if config is not CacheConfig.RECOMPUTE:
        tiers = _store_tiers(config, profile, footprint_bytes, max(ratio, 1), options.cxl_factor)
        namespace = requests[0].namespace if requests else None
        if namespace is None or namespace.block_bytes != profile.block_bytes:
            raise ProfileError("requests were keyed for another block size than the profile's")
        store = TieredStore(
            namespace,
            StoreConfig(tiers=tiers, metadata_only=True),
            clock=clock,
            executor=InlineExecutor(),
        )
        if config is CacheConfig.ITME:
            planner = ForesightPlanner(
                store, lookahead=options.lookahead, chunk_blocks=options.chunk_blocks
            )
    lanes = _Lanes(clock)
    async_saves = profile.async_saves if options.async_saves is None else options.async_saves
    results: list[SimRequestResult] = []
    save_lag = 0.0
    try:
        for i, req in enumerate(requests):
            # take this request's plan before planning the next window, which would
            # otherwise cancel it as no longer upcoming
            pins = planner.take(req.request_id) if planner is not None else None
            if planner is not None:
                upcoming = requests[i + 1 : i + 1 + planner.lookahead]
                jobs = planner.plan([(r.request_id, r.keys) for r in upcoming])
                for job in jobs:
                    lanes.submit("stage1", clock.now(), _stage_job(planner, job))
            t0 = clock.now()
            clock.sleep(profile.request_overhead_s)
            cached = 0
            hit_tiers: tuple[TierKind, ...] = ()
            handle = None
            if store is not None:
                lanes.run_until(clock.now())
                usable = (req.prompt_tokens - 1) // bt
                hit = store.lookup(req.keys[:usable])
                matched = profile.usable_cached_tokens(hit.num_blocks * bt, req.prompt_tokens)
                handle = store.prepare_load(req.keys[: matched // bt])
                if pins is not None:
                    store.complete_load(pins)
                loaded = store.read(handle, [None] * len(handle.keys)) if handle.keys else 0
                clock.sleep(loaded * profile.load_block_overhead_s)
                cached = profile.usable_cached_tokens(loaded * bt, req.prompt_tokens)
                hit_tiers = handle.tiers[: cached // bt]
            clock.sleep(profile.prefill_s(req.prompt_tokens, cached))
            ttft = clock.now() - t0
            if store is not None:
                # as ServingEngine: gather the new blocks on the engine (save_block_overhead),
                # then store them on the save lane while decoding
                first = cached // bt
                clock.sleep(max(0, len(req.keys) - first) * profile.save_block_overhead_s)
                lanes.run_until(clock.now())
                save_lag = max(save_lag, clock.time_of("save") - clock.now())
                lanes.submit("save", clock.now(), _save_job(store, req.keys, first))
            clock.sleep(profile.decode_s(req.prompt_tokens, req.output_tokens))
            if store is not None and handle is not None:
                lanes.run_until(clock.now())
                if not async_saves:  # wait_for_save() before the request finishes
                    clock.sleep_until(clock.time_of("save"))
                store.complete_load(handle)
            results.append(
                SimRequestResult(
                    req.request_id, ttft, clock.now() - t0, req.prompt_tokens, cached, hit_tiers
                )
            )
            if progress is not None:
                progress(i + 1)
        wall = clock.now()
        stats = store.stats() if store is not None else None
        return SimRun(
            config,
            ratio,
            tuple(results),
            wall,
            stats,
            planner.stats if planner else None,
            save_lag,
        )
    finally:
        if planner is not None:
            for rid in planner.planned():
                planner.cancel(rid)
        if store is not None:
            store.close()


def _stage_job(planner: ForesightPlanner, job: ChunkJob) -> Job:
    def run() -> list[tuple[str, Job]]:
        follow = planner.run(job)
        if follow is None:
            return []
        return [(f"stage{follow.stage + 1}", _stage_job(planner, follow))]

    return run


def _save_job(store: TieredStore, keys: Sequence[BlockKey], first_block: int) -> Job:
    def run() -> list[tuple[str, Job]]:
        _save(store, keys, first_block)
        return []

    return run
