"""Eviction policies: LRU order, S3-FIFO scan resistance, pinning, bookkeeping invariants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmsys.tiermem import LruPolicy, PolicyKind, S3FifoPolicy, TierConfigError
from llmsys.tiermem.policy import make_policy


def _never(_: object) -> bool:
    return False


def test_lru_evicts_least_recently_used_and_skips_pinned() -> None:
    lru = LruPolicy()
    for k in "abcd":
        lru.insert(k)
    lru.touch("a")  # order: b c d a
    assert lru.evict(_never) == "b"
    assert lru.evict(lambda k: k == "c") == "d"  # c pinned
    assert lru.evict(lambda k: True) is None
    assert len(lru) == 2 and "c" in lru and "a" in lru


def _hits(policy_kind: PolicyKind, trace: list[int], capacity: int) -> int:
    policy = make_policy(policy_kind, capacity)
    hits = 0
    for key in trace:
        if key in policy:
            hits += 1
            policy.touch(key)
            continue
        if len(policy) >= capacity:
            assert policy.evict(_never) is not None
        policy.insert(key)
    return hits


def test_s3fifo_resists_a_scan_that_flushes_lru() -> None:
    # A hot set of 8 keys reused constantly, interrupted by one-off scans of 50 keys.
    hot = list(range(8))
    trace: list[int] = []
    scan_key = 1000
    for _ in range(20):
        trace += hot * 3
        trace += list(range(scan_key, scan_key + 50))
        scan_key += 50
    lru, s3 = _hits(PolicyKind.LRU, trace, 10), _hits(PolicyKind.S3FIFO, trace, 10)
    assert s3 > lru * 1.2, (lru, s3)


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(list(PolicyKind)),
    ops=st.lists(st.tuples(st.sampled_from("itre"), st.integers(0, 15)), max_size=80),
    pinned=st.sets(st.integers(0, 15), max_size=6),
)
def test_policies_track_exactly_the_resident_keys(
    kind: PolicyKind, ops: list[tuple[str, int]], pinned: set[int]
) -> None:
    policy = make_policy(kind, 8)
    resident: set[int] = set()
    for op, key in ops:
        if op == "i":
            policy.insert(key)
            resident.add(key)
        elif op == "t":
            policy.touch(key)
        elif op == "r":
            policy.remove(key)
            resident.discard(key)
        else:
            victim = policy.evict(lambda k: k in pinned)
            if victim is None:
                assert resident <= pinned
            else:
                assert victim in resident and victim not in pinned
                resident.discard(victim)  # type: ignore[arg-type]
        assert len(policy) == len(resident)
        assert all(k in policy for k in resident)


def test_bad_policy_arguments_raise() -> None:
    with pytest.raises(TierConfigError):
        S3FifoPolicy(0)
    with pytest.raises(TierConfigError):
        make_policy("lru", 4)  # type: ignore[arg-type]
