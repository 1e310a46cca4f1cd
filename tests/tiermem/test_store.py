"""TieredStore scenarios: lookup, two-phase load/store, pinning, demotion, promotion,
prefetch, metadata-only replay and bad input."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmsys.tiermem import (
    BlockInputError,
    BlockSizeError,
    CapacityError,
    CxlBackend,
    CxlConfig,
    DramConfig,
    HandleStateError,
    InlineExecutor,
    ManualClock,
    Namespace,
    NamespaceMismatchError,
    PolicyKind,
    SsdConfig,
    StoreConfig,
    TierConfigError,
    TieredStore,
    TierKind,
    aligned_buffer,
    chain_keys,
    parse_tier_kind,
)

from .helpers import BLOCK_BYTES, NAMESPACE, block_bytes_for, make_keys

D, C, S = TierKind.DRAM, TierKind.CXL, TierKind.SSD


def _store(tmp_path: Path, dram: int = 2, cxl: int = 2, ssd: int = 4, **kw: object) -> TieredStore:
    tiers = (
        DramConfig(dram * BLOCK_BYTES),
        CxlConfig(cxl * BLOCK_BYTES, backend=CxlBackend.EMULATED, bandwidth_bytes_per_s=50e9),
        SsdConfig(tmp_path, ssd * BLOCK_BYTES),
    )
    return TieredStore(NAMESPACE, StoreConfig(tiers=tiers, **kw))  # type: ignore[arg-type]


def _save(store: TieredStore, keys: list, first: int = 0) -> None:
    for i, key in enumerate(keys):
        h = store.prepare_store([key])
        for k in h.keys:
            store.write(h, k, memoryview(block_bytes_for(first + i)))
        store.complete_store(h)


def _load(store: TieredStore, keys: list) -> tuple[int, list[memoryview]]:
    h = store.prepare_load(keys)
    outs = [aligned_buffer(BLOCK_BYTES) for _ in h.keys]
    n = store.read(h, outs)
    store.complete_load(h)
    return n, outs


def test_store_demotes_down_the_tiers_and_lookup_reports_each_tier(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        keys = make_keys(7)
        _save(store, keys[:6])
        # dram holds 2, cxl 2, ssd 4: saving [0..5] pushes the oldest down, LRU order
        assert store.lookup(keys).tiers == (S, S, C, C, D, D)
        assert store.lookup(keys).num_blocks == 6  # keys[6] never stored
        # a key names a whole prefix: the same blocks after another first token never match
        assert store.lookup(make_keys(6, offset=1)).num_blocks == 0
        n, outs = _load(store, keys)
        assert n == 6
        for i, out in enumerate(outs):
            assert np.array_equal(np.frombuffer(out, dtype=np.uint8), block_bytes_for(i))
        stats = store.stats()
        assert stats.demotions >= 6 and stats.dropped == 0


def test_overflowing_the_last_tier_drops_the_coldest(tmp_path: Path) -> None:
    with _store(tmp_path, dram=1, cxl=1, ssd=1) as store:
        keys = make_keys(4)
        _save(store, keys)
        # store [0,1,2,3] into 1+1+1 slots -> [0] leaves the store
        assert store.lookup(keys).num_blocks == 0
        assert store.lookup(keys[:1]).num_blocks == 0
        assert store.stats().dropped == 1
        assert sum(t.resident_blocks for t in store.stats().tiers) == 3


def test_hit_in_a_slower_tier_is_promoted_to_dram(tmp_path: Path) -> None:
    with _store(tmp_path, dram=2) as store:
        keys = make_keys(4)
        _save(store, keys)  # tiers: (C, C, D, D)
        assert store.lookup(keys).tiers == (C, C, D, D)
        n, _ = _load(store, keys[:1])
        assert n == 1
        assert store.lookup(keys[:1]).tiers == (D,)
        assert store.stats().promotions == 1


def test_pinned_blocks_are_never_evicted(tmp_path: Path) -> None:
    with _store(tmp_path, dram=2, cxl=1, ssd=1) as store:
        keys = make_keys(6)
        _save(store, keys[:2])  # dram [0,1]
        pin = store.prepare_load(keys[:2])  # pin [0,1] in dram
        h = store.prepare_store(keys[2:4])
        # dram is full of pinned blocks: nothing can be reserved
        assert h.keys == ()
        store.complete_store(h)
        assert store.lookup(keys).tiers == (D, D)
        store.complete_load(pin)
        _save(store, keys[2:3], first=2)  # now [0] may go down to cxl
        assert store.lookup(keys[:3]).tiers == (C, D, D)


def test_failed_store_is_discarded_and_reservations_released(tmp_path: Path) -> None:
    with _store(tmp_path, dram=1) as store:
        key = make_keys(1)[0]
        h = store.prepare_store([key])
        store.write(h, key, memoryview(block_bytes_for(0)))
        store.complete_store(h, success=False)
        assert store.lookup([key]).num_blocks == 0
        assert store.dram.free_blocks == 1
        with pytest.raises(HandleStateError):
            store.complete_store(h)


def test_prefetch_moves_blocks_up_and_signals_completion(tmp_path: Path) -> None:
    with _store(tmp_path, dram=2, cxl=2, ssd=4) as store:
        keys = make_keys(6)
        _save(store, keys)  # (S, S, C, C, D, D)
        handle = store.prefetch(keys[:2], TierKind.CXL)
        assert handle.wait(10)
        assert (handle.moved_blocks, handle.missing_blocks, handle.error) == (2, 0, None)
        assert store.lookup(keys[:2]).tiers == (C, C)
        n, outs = _load(store, keys[:2])
        assert n == 2
        assert np.array_equal(np.frombuffer(outs[1], dtype=np.uint8), block_bytes_for(1))


def test_prefetch_stops_at_its_deadline() -> None:
    clock = ManualClock()
    config = StoreConfig(
        tiers=(DramConfig(4 * BLOCK_BYTES), CxlConfig(8 * BLOCK_BYTES, bandwidth_bytes_per_s=1e9)),
        metadata_only=True,
    )
    store = TieredStore(NAMESPACE, config, clock=clock, executor=InlineExecutor())
    keys = make_keys(8)
    for key in keys:
        h = store.prepare_store([key])
        store.write(h, key, None)
        store.complete_store(h)
    assert store.lookup(keys).tiers == (C,) * 4 + (D,) * 4
    # each cxl read costs 300 ns + 64 KiB / 1 GB/s ~ 65.8 us of simulated time
    handle = store.prefetch(keys[:4], TierKind.DRAM, deadline_s=clock.now() + 100e-6)
    assert handle.done.is_set() and handle.expired
    assert 1 <= handle.moved_blocks < 4
    store.close()


def test_metadata_only_store_charges_modelled_time_and_keeps_counters() -> None:
    clock = ManualClock()
    config = StoreConfig(
        tiers=(DramConfig(2 * BLOCK_BYTES), CxlConfig(2 * BLOCK_BYTES, bandwidth_bytes_per_s=2e9)),
        metadata_only=True,
    )
    store = TieredStore(NAMESPACE, config, clock=clock, executor=InlineExecutor())
    keys = make_keys(3)
    for key in keys:
        h = store.prepare_store([key])
        store.write(h, key, None)
        store.complete_store(h)
    # 3 dram writes, then [0] demoted: 1 dram read + 1 cxl write
    dram_model, cxl_model = store.tiers[0].model, store.tiers[1].model
    expected = 4 * dram_model.write_s(BLOCK_BYTES) - dram_model.write_s(BLOCK_BYTES)
    expected += dram_model.read_s(BLOCK_BYTES) + cxl_model.write_s(BLOCK_BYTES)
    assert clock.now() == pytest.approx(expected)
    assert store.lookup(keys).tiers == (C, D, D)
    store.close()


@settings(max_examples=25, deadline=None)
@given(stored=st.sets(st.integers(0, 11), max_size=12), policy=st.sampled_from(list(PolicyKind)))
def test_lookup_is_monotone_in_prefix_length(stored: set[int], policy: PolicyKind) -> None:
    config = StoreConfig(tiers=(DramConfig(16 * BLOCK_BYTES, policy=policy),), metadata_only=True)
    store = TieredStore(NAMESPACE, config, clock=ManualClock(), executor=InlineExecutor())
    keys = make_keys(12)
    for i in sorted(stored):
        h = store.prepare_store([keys[i]])
        store.write(h, keys[i], None)
        store.complete_store(h)
    hits = [store.lookup(keys[:n]).num_blocks for n in range(13)]
    assert all(a <= b for a, b in itertools.pairwise(hits))
    expected = 0
    while expected in stored:
        expected += 1
    assert hits[-1] == expected
    store.close()


def test_bad_input_raises_documented_errors(tmp_path: Path) -> None:
    with pytest.raises(CapacityError):
        TieredStore(NAMESPACE, StoreConfig(tiers=(DramConfig(BLOCK_BYTES - 1),)))
    with pytest.raises(TierConfigError, match="unknown tier"):
        parse_tier_kind("nvme")
    with pytest.raises(TierConfigError, match="first tier"):
        StoreConfig(tiers=(SsdConfig(tmp_path, BLOCK_BYTES),))
    with pytest.raises(TierConfigError, match="fastest first"):
        StoreConfig(
            tiers=(
                DramConfig(BLOCK_BYTES),
                SsdConfig(tmp_path, BLOCK_BYTES),
                CxlConfig(BLOCK_BYTES),
            )
        )
    with _store(tmp_path) as store:
        other = Namespace("other-model", "float16", "layers,kv,tokens", 4, BLOCK_BYTES)
        foreign = chain_keys(other, np.arange(8))
        with pytest.raises(NamespaceMismatchError):
            store.lookup(foreign)
        with pytest.raises(NamespaceMismatchError):
            store.prepare_store(foreign)
        with pytest.raises(BlockInputError):
            store.lookup([b"short"])  # type: ignore[list-item]
        key = make_keys(1)[0]
        h = store.prepare_store([key])
        with pytest.raises(BlockSizeError):
            store.write(h, key, memoryview(bytes(BLOCK_BYTES // 2)))
        with pytest.raises(HandleStateError):
            store.write(h, make_keys(2)[1], memoryview(block_bytes_for(0)))
        store.complete_store(h)


def test_ssd_blocks_survive_a_restart(tmp_path: Path) -> None:
    keys = make_keys(4)
    with _store(tmp_path, dram=1, cxl=1, ssd=4) as store:
        _save(store, keys)  # (S, S, C, D)
    with _store(tmp_path, dram=1, cxl=1, ssd=4) as store:
        assert store.lookup(keys).tiers == (S, S)
        n, outs = _load(store, keys)
        assert n == 2
        assert np.array_equal(np.frombuffer(outs[0], dtype=np.uint8), block_bytes_for(0))


def test_prepare_store_skips_duplicates_and_keys_already_cached(tmp_path: Path) -> None:
    with _store(tmp_path, dram=4) as store:
        a, b = make_keys(2)
        h = store.prepare_store([a, a, b])
        assert h.keys == (a, b)
        # a second writer of the same prefix while the first is open gets nothing to do
        assert store.prepare_store([a, b]).keys == ()
        for i, key in enumerate(h.keys):
            store.write(h, key, memoryview(block_bytes_for(i)))
        store.complete_store(h)
        assert store.prepare_store([a, b]).keys == ()
        assert store.dram.free_blocks == 2
