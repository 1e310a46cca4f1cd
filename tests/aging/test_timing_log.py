"""TimingLog: a ring that matches a bounded deque of dicts, and holds its size while recording."""

from __future__ import annotations

import collections
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmsys.aging.probe_errors import ProbeConfigError
from llmsys.aging.timing_log import RequestTiming, TimingLog


def _timing(i: int, first: bool = True) -> RequestTiming:
    return RequestTiming(
        number=i,
        chat=i % 2 == 1,
        received_s=1000.0 + i,
        first_chunk_s=1000.25 + i if first else None,
        end_s=1001.5 + i,
        tokens=i % 17,
    )


@given(
    capacity=st.integers(1, 12),
    timings=st.lists(
        st.builds(
            RequestTiming,
            number=st.integers(0, 2**62),
            chat=st.booleans(),
            received_s=st.floats(0, 2e9),
            first_chunk_s=st.none() | st.floats(0, 2e9),
            end_s=st.floats(0, 2e9),
            tokens=st.integers(0, 2**31),
        ),
        max_size=40,
    ),
)
def test_matches_a_bounded_deque_of_dicts(capacity: int, timings: list[RequestTiming]) -> None:
    log = TimingLog(capacity)
    reference: collections.deque[dict[str, object]] = collections.deque(maxlen=capacity)
    for t in timings:
        log.record(t)
        reference.append(t.to_dict())
        assert log.entries() == list(reference)
    assert log.recorded_total == len(timings)


def test_ids_and_missing_first_chunk() -> None:
    log = TimingLog(4)
    log.record(_timing(7, first=False))
    log.record(_timing(8))
    first, second = log.entries()
    assert first == {
        "id": "chatcmpl-7",
        "received_s": 1007.0,
        "first_chunk_s": None,
        "end_s": 1008.5,
        "tokens": 7,
    }
    assert second["id"] == "cmpl-8" and second["first_chunk_s"] == pytest.approx(1008.25)


@pytest.mark.parametrize("capacity", [0, -3])
def test_capacity_must_be_positive(capacity: int) -> None:
    with pytest.raises(ProbeConfigError, match="capacity"):
        TimingLog(capacity)


@pytest.mark.parametrize("field", ["number", "tokens"])
def test_negative_fields_are_rejected(field: str) -> None:
    values = {"number": 1, "chat": False, "received_s": 0.0, "first_chunk_s": None}
    values |= {"end_s": 0.0, "tokens": 1, field: -1}
    with pytest.raises(ProbeConfigError):
        RequestTiming(**values)  # type: ignore[arg-type]


def test_recording_retains_nothing() -> None:
    # 3x the capacity of records, built before the first snapshot: the log's traced size
    # after them is what it was after the first one (a deque of dicts would keep 16 dicts).
    log = TimingLog(16)
    timings = [_timing(i) for i in range(48)]
    tracemalloc.start()
    try:
        log.record(timings[0])
        before = tracemalloc.take_snapshot()
        for t in timings[1:]:
            log.record(t)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    keep = [tracemalloc.Filter(True, "*/llmsys/aging/timing_log.py")]
    diff = after.filter_traces(keep).compare_to(before.filter_traces(keep), "lineno")
    assert sum(d.count_diff for d in diff) <= 0, diff[:3]
