"""The one contract every tier passes: dram, cxl (emulated, DAX), ssd, remote, and the
metadata-only variants (which keep the index and counters but no bytes)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmsys.tiermem import BlockSizeError, Tier, aligned_buffer

from .helpers import BLOCK_BYTES, block_bytes_for, make_keys

MakeTier = Callable[[int], Tier]


def _data(tier: Tier, i: int) -> memoryview | None:
    return None if tier.metadata_only else memoryview(block_bytes_for(i))


def _out(tier: Tier) -> memoryview | None:
    return None if tier.metadata_only else aligned_buffer(BLOCK_BYTES)


def _same(tier: Tier, out: memoryview | None, i: int) -> bool:
    if tier.metadata_only:
        return out is None
    assert out is not None
    return bool(np.array_equal(np.frombuffer(out, dtype=np.uint8), block_bytes_for(i)))


def test_put_then_get_returns_the_same_bytes(make_tier: MakeTier) -> None:
    tier = make_tier(4)
    keys = make_keys(3)
    for i, key in enumerate(keys):
        assert tier.put(key, _data(tier, i))
    for i, key in enumerate(keys):
        out = _out(tier)
        assert tier.get_into(key, out) == BLOCK_BYTES
        assert _same(tier, out, i)
    stats = tier.stats()
    assert (stats.hits, stats.misses) == (3, 0)
    assert stats.bytes_in == stats.bytes_out == 3 * BLOCK_BYTES
    assert stats.resident_blocks == 3


def test_unaligned_caller_buffers_work(make_tier: MakeTier) -> None:
    tier = make_tier(2)
    if tier.metadata_only:
        pytest.skip("no bytes in metadata-only mode")
    key = make_keys(1)[0]
    backing = np.zeros(BLOCK_BYTES + 1, dtype=np.uint8)
    src = backing[1:]  # deliberately one byte off any page boundary
    src[:] = block_bytes_for(7)
    assert tier.put(key, memoryview(src))
    backing[:] = 0
    assert tier.get_into(key, memoryview(backing[1:])) == BLOCK_BYTES
    assert np.array_equal(backing[1:], block_bytes_for(7))


def test_absent_key_is_a_counted_miss(make_tier: MakeTier) -> None:
    tier = make_tier(2)
    assert tier.get_into(make_keys(1)[0], _out(tier)) is None
    assert tier.stats().misses == 1
    assert not tier.contains(make_keys(1)[0])


def test_capacity_is_never_exceeded(make_tier: MakeTier) -> None:
    tier = make_tier(3)
    keys = make_keys(4)
    # put [0,1,2] fills the 3 slots; put [3] is refused, nothing is displaced
    assert [tier.put(k, _data(tier, i)) for i, k in enumerate(keys)] == [True, True, True, False]
    assert len(tier) == 3 and tier.free_blocks == 0
    assert keys[3] not in tier and all(k in tier for k in keys[:3])


def test_delete_frees_the_slot_and_the_key_misses(make_tier: MakeTier) -> None:
    tier = make_tier(1)
    a, b = make_keys(2)
    assert tier.put(a, _data(tier, 0))
    assert tier.delete(a)
    assert not tier.delete(a)
    assert tier.get_into(a, _out(tier)) is None
    assert tier.put(b, _data(tier, 1))  # the freed slot is reused
    out = _out(tier)
    assert tier.get_into(b, out) == BLOCK_BYTES and _same(tier, out, 1)


def test_putting_a_resident_key_keeps_it(make_tier: MakeTier) -> None:
    tier = make_tier(2)
    key = make_keys(1)[0]
    assert tier.put(key, _data(tier, 0))
    assert tier.put(key, _data(tier, 0))
    assert len(tier) == 1 and tier.stats().bytes_in == BLOCK_BYTES


def test_wrong_block_size_raises(make_tier: MakeTier) -> None:
    tier = make_tier(2)
    key = make_keys(1)[0]
    with pytest.raises(BlockSizeError):
        tier.put(key, memoryview(bytes(BLOCK_BYTES - 1)))
    with pytest.raises(BlockSizeError):
        tier.get_into(key, memoryview(bytearray(BLOCK_BYTES + 4096)))
    assert len(tier) == 0


def test_many_calls_match_single_calls(make_tier: MakeTier) -> None:
    tier = make_tier(4)
    keys = make_keys(5)
    assert tier.put_many(keys, [_data(tier, i) for i in range(5)]) == [True] * 4 + [False]
    outs = [_out(tier) for _ in keys]
    got = tier.get_many_into(keys, outs)
    assert got == [BLOCK_BYTES] * 4 + [None]
    assert all(_same(tier, outs[i], i) for i in range(4))


def test_metadata_only_waits_the_model_cost(make_tier: MakeTier) -> None:
    tier = make_tier(2)
    if not tier.metadata_only:
        pytest.skip("real tiers take real time")
    key = make_keys(1)[0]
    t0 = tier.clock.now()
    tier.put(key, None)
    tier.get_into(key, None)
    expected = tier.model.write_s(BLOCK_BYTES) + tier.model.read_s(BLOCK_BYTES)
    assert tier.clock.now() - t0 == pytest.approx(expected)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(st.tuples(st.sampled_from(["put", "get", "del"]), st.integers(0, 5)), max_size=25)
)
def test_random_operations_match_a_dict_model(
    make_tier: MakeTier, ops: list[tuple[str, int]]
) -> None:
    # Reference: a dict limited to 3 entries. The tier must agree on every answer.
    tier = make_tier(3)
    keys = make_keys(6)
    for key in tier:
        tier.delete(key)
    model: dict[int, int] = {}
    for op, i in ops:
        if op == "put":
            ok = tier.put(keys[i], _data(tier, i))
            expect = i in model or len(model) < 3
            assert ok == expect
            if ok:
                model[i] = i
        elif op == "get":
            out = _out(tier)
            got = tier.get_into(keys[i], out)
            assert (got is not None) == (i in model)
            if got is not None:
                assert _same(tier, out, i)
        else:
            assert tier.delete(keys[i]) == (i in model)
            model.pop(i, None)
        assert len(tier) == len(model) <= tier.capacity_blocks
