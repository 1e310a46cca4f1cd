"""Moves between tiers copy without the store lock, and never serve a half-moved block.

A gate (an Event) holds the ssd tier's write open, so each test can act while a demotion's
copy is in flight - no timings decide the outcome. Timeouts only stop a broken store from
hanging the run.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from llmsys.tiermem import (
    CxlBackend,
    CxlConfig,
    DramConfig,
    SsdConfig,
    StoreConfig,
    TieredStore,
    TierKind,
    aligned_buffer,
)
from llmsys.tiermem.keys import BlockKey
from llmsys.tiermem.tiers.base import _Entry

from .helpers import BLOCK_BYTES, NAMESPACE, block_bytes_for, make_keys

D, S = TierKind.DRAM, TierKind.SSD
GUARD_S = 60.0  # only a hang guard: every wait below ends on an event when the store works


@dataclass
class Gate:
    """Holds the ssd tier's writes until ``release`` is set; records what it saw."""

    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    lock_held_while_writing: list[bool] = field(default_factory=list)


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[TieredStore, Gate]]:
    """A dram (2 blocks) + ssd (8 blocks) store whose ssd writes wait on a gate."""
    config = StoreConfig(tiers=(DramConfig(2 * BLOCK_BYTES), SsdConfig(tmp_path, 8 * BLOCK_BYTES)))
    store = TieredStore(NAMESPACE, config)
    gate = Gate()
    ssd = store.tiers[1]
    real_write = ssd._write  # type: ignore[attr-defined]

    def gated_write(key: BlockKey, entry: _Entry, data: memoryview) -> None:
        gate.lock_held_while_writing.append(store._lock._is_owned())  # type: ignore[attr-defined]
        gate.entered.set()
        assert gate.release.wait(GUARD_S), "test never opened the gate"
        real_write(key, entry, data)

    ssd._write = gated_write  # type: ignore[attr-defined]
    yield store, gate
    gate.release.set()
    store.close()


def _save(store: TieredStore, keys: list[BlockKey], first: int = 0) -> None:
    for i, key in enumerate(keys):
        h = store.prepare_store([key])
        for k in h.keys:
            store.write(h, k, memoryview(block_bytes_for(first + i)))
        store.complete_store(h)


def _read(store: TieredStore, keys: list[BlockKey]) -> list[np.ndarray]:
    h = store.prepare_load(keys)
    outs = [aligned_buffer(BLOCK_BYTES) for _ in h.keys]
    n = store.read(h, outs)
    store.complete_load(h)
    return [np.frombuffer(o, dtype=np.uint8).copy() for o in outs[:n]]


def _in_thread(fn: object) -> tuple[threading.Thread, threading.Event, list[object]]:
    done = threading.Event()
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())  # type: ignore[operator]
        except BaseException as exc:  # surfaced by the test's asserts
            out.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done, out


def test_dram_hits_are_served_while_a_demotion_writes_to_ssd(
    gated: tuple[TieredStore, Gate],
) -> None:
    store, gate = gated
    keys = make_keys(3)
    _save(store, keys[:2])  # dram [0, 1]
    # storing [2] evicts [0] (LRU): its copy to ssd starts and blocks on the gate
    _, saved, _ = _in_thread(lambda: _save(store, keys[2:], first=2))
    assert gate.entered.wait(GUARD_S)
    # meanwhile the engine looks up, pins, reads and unpins the dram-resident [1]
    assert store.lookup(keys[1:2]).tiers == (D,)
    _, read_done, got = _in_thread(lambda: _read(store, keys[1:2]))
    assert read_done.wait(GUARD_S), "a dram hit waited for a slow-tier write"
    assert not gate.release.is_set() and not saved.is_set()  # the write was still in flight
    assert np.array_equal(got[0][0], block_bytes_for(1))  # type: ignore[index]
    gate.release.set()
    assert saved.wait(GUARD_S)
    assert gate.lock_held_while_writing == [False]  # the copy ran without the store lock
    assert store.lookup(keys).tiers == (S, D, D)
    for i, block in enumerate(_read(store, keys)):
        assert np.array_equal(block, block_bytes_for(i)), i


def test_a_block_being_demoted_is_read_only_after_it_lands(
    gated: tuple[TieredStore, Gate],
) -> None:
    store, gate = gated
    keys = make_keys(3)
    _save(store, keys[:2])
    _, saved, _ = _in_thread(lambda: _save(store, keys[2:], first=2))
    assert gate.entered.wait(GUARD_S)
    # [0] is half-way to ssd; its dram slot will hold [2] once the move publishes
    assert store.lookup(keys[:1]).tiers == (D,)  # lookup still sees it at its source
    _, read_done, got = _in_thread(lambda: _read(store, keys[:1]))
    assert not read_done.wait(0.5)  # it waits for the move (when correct, it cannot finish)
    gate.release.set()
    assert read_done.wait(GUARD_S) and saved.wait(GUARD_S)
    assert np.array_equal(got[0][0], block_bytes_for(0))  # type: ignore[index]
    assert gate.lock_held_while_writing and not any(gate.lock_held_while_writing)


def test_concurrent_stores_prefetches_and_reads_keep_every_blocks_bytes(tmp_path: Path) -> None:
    config = StoreConfig(
        tiers=(
            DramConfig(4 * BLOCK_BYTES),
            CxlConfig(6 * BLOCK_BYTES, backend=CxlBackend.EMULATED, bandwidth_bytes_per_s=20e9),
            SsdConfig(tmp_path, 12 * BLOCK_BYTES),
        )
    )
    keys = make_keys(40)  # more than the 22 slots: blocks cascade down and drop out
    executor = ThreadPoolExecutor(3)
    errors: list[str] = []
    stop = threading.Event()
    with TieredStore(NAMESPACE, config, executor=executor) as store:

        def saver() -> None:
            for i in range(len(keys)):
                _save(store, keys[i : i + 1], first=i)
            stop.set()

        def prefetcher(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                i = rng.randrange(len(keys))
                target = TierKind.DRAM if rng.random() < 0.5 else TierKind.CXL
                h = store.prefetch(keys[i : i + 3], target)
                if not h.wait(GUARD_S) or h.error is not None:
                    errors.append(f"prefetch: {h.error}")

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                start = rng.randrange(len(keys))
                for j, block in enumerate(_read(store, keys[start : start + 4])):
                    if not np.array_equal(block, block_bytes_for(start + j)):
                        errors.append(f"block {start + j} served with wrong bytes")

        threads = [threading.Thread(target=saver)]
        threads += [threading.Thread(target=prefetcher, args=(s,)) for s in range(2)]
        threads += [threading.Thread(target=reader, args=(s,)) for s in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(GUARD_S)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        # quiescent: nothing moving, reserved or pinned; local tiers exclusive
        assert not store._moving and not store._reading and not store._pins
        assert store._reserved == [0, 0, 0] and store._leaving == [0, 0, 0]
        for key in keys:
            assert sum(key in t for t in store.tiers) <= 1
        survivors = [i for i, k in enumerate(keys) if store.lookup([k]).num_blocks]
        # every slot is free or holds a block the store knows of: no slot leaked
        assert len(survivors) == sum(len(t) for t in store.tiers)
        assert all(len(t) + t.free_blocks == t.capacity_blocks for t in store.tiers)
        assert len(survivors) >= 12  # (a promotion out of a full cascade leaves a hole)
        for i in survivors:
            assert np.array_equal(_read(store, keys[i : i + 1])[0], block_bytes_for(i)), i
    executor.shutdown()
