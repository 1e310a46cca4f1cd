"""Property test: random store/load/prefetch sequences keep the store's invariants."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from llmsys.tiermem import (
    CxlConfig,
    DramConfig,
    InlineExecutor,
    LoadHandle,
    ManualClock,
    PolicyKind,
    StoreConfig,
    TieredStore,
    TierKind,
)
from llmsys.tiermem.tiers import SsdConfig

from .helpers import BLOCK_BYTES, NAMESPACE, make_keys

OPS = st.lists(
    st.tuples(st.sampled_from(["store", "pin", "unpin", "load", "prefetch"]), st.integers(0, 11)),
    max_size=40,
)


@settings(max_examples=40, deadline=None)
@given(ops=OPS, policy=st.sampled_from(list(PolicyKind)))
def test_random_operations_keep_invariants(ops: list[tuple[str, int]], policy: PolicyKind) -> None:
    config = StoreConfig(
        tiers=(
            DramConfig(2 * BLOCK_BYTES, policy=policy),
            CxlConfig(2 * BLOCK_BYTES, bandwidth_bytes_per_s=1e9, policy=policy),
            SsdConfig(Path("/nonexistent"), 3 * BLOCK_BYTES, policy=policy),  # never opened,
        ),
        metadata_only=True,  # the same code path, no bytes: fast enough for many examples
    )
    store = TieredStore(NAMESPACE, config, clock=ManualClock(), executor=InlineExecutor())
    keys = make_keys(12)
    pins: list[LoadHandle] = []
    stored: set[int] = set()
    for op, i in ops:
        key = keys[i]
        if op == "store":
            h = store.prepare_store([key])
            for k in h.keys:
                store.write(h, k, None)
            store.complete_store(h)
            if h.keys:
                stored.add(i)
        elif op == "pin":
            pins.append(store.prepare_load([key]))
        elif op == "unpin" and pins:
            store.complete_load(pins.pop(0))
        elif op == "load":
            h = store.prepare_load([key])
            assert store.read(h, [None] * len(h.keys)) == len(h.keys)
            store.complete_load(h)
        elif op == "prefetch":
            handle = store.prefetch([key], TierKind.DRAM)
            assert handle.done.is_set() and handle.error is None
        # Invariants after every step:
        stats = store.stats()
        for tier_stats in stats.tiers:
            assert tier_stats.resident_blocks <= tier_stats.capacity_blocks
        locations = {k: [t.kind for t in store.tiers if t.contains(k)] for k in keys}
        for k, where in locations.items():
            assert len(where) <= 1, (k, where)  # local tiers are exclusive
            hit = store.lookup([k])
            assert hit.tiers == tuple(where)  # lookup reports exactly where the block is
        for handle in pins:  # pinned blocks never leave the store
            assert store.lookup(list(handle.keys)).num_blocks == len(handle.keys)
        # between calls nothing is in flight: no block moving, no slot reserved
        assert not store._moving and store._reserved == [0, 0, 0] and store._leaving == [0, 0, 0]
        total = sum(t.resident_blocks for t in stats.tiers)
        assert total == len([k for k in keys if locations[k]])
        assert total + stats.dropped >= len(stored)
    for handle in pins:
        store.complete_load(handle)
    store.close()
