"""The serving layer does not age: a zero-rate engine retains no Python heap per request.

A control deployment is the campaign's reference for "no aging", so its server must not
grow with requests. The old per-request timing log (a ``deque(maxlen=1024)`` of dicts) kept
~350 B per request until 1,024 requests - this test failed on it: 68,445 B net from
llmsys code over the 256 measured requests against ``_OWN_NET_BYTES_MAX`` = 1,024. The
measure is a count of requests and of traced allocations, never a time.
"""

from __future__ import annotations

import gc
import http.client
import json
import threading
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from llmsys.aging.injectors import InjectorConfig, InjectorEngine, InjectorKind
from llmsys.aging.openai_api import OpenAIServer

_WARMUP_REQUESTS = 64
"""Requests before the first snapshot: lazy imports, caches and pools fill here."""
_MEASURED_REQUESTS = 256
"""Requests between the snapshots (fewer than the timing log's 1,024 slots, so a log that
grows per entry is still growing)."""
_OWN_NET_BYTES_MAX = 1024
"""Net growth allowed, over all measured requests, of blocks allocated by llmsys code itself
(the old log: 68,445 B measured here)."""
_OWN_NET_BLOCKS_MAX = 8
"""Net blocks allowed from llmsys code itself (the old log: several per request)."""
_TREE_NET_BYTES_PER_REQUEST_MAX = 64
"""Net growth allowed per request of everything allocated under a serving-layer frame
(stdlib included). Not zero: CPython's free lists keep some freed objects allocated, and
tracemalloc counts them where they were first made (measured ~19 B per request over 512
requests, e.g. tuples from ``datetime.timetuple`` in the ``Date`` header)."""
_TRACE_FRAMES = 16


@pytest.fixture
def control_server() -> Iterator[OpenAIServer]:
    cfg = InjectorConfig(kind=InjectorKind.CONTROL, first_token_delay_s=0.0, token_delay_s=0.0)
    server = OpenAIServer(InjectorEngine(cfg), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(10)


def _request(server: OpenAIServer, i: int) -> None:
    chat = i % 2 == 0
    words = " ".join(f"w{i}-{k}" for k in range(8 + i % 24))
    body: dict[str, object] = {"max_tokens": 1 + i % 16, "stream": i % 3 != 0}
    if chat:
        body["messages"] = [{"role": "user", "content": words}]
    else:
        body["prompt"] = words
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        path = "/v1/chat/completions" if chat else "/v1/completions"
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
    finally:
        conn.close()


def _settle(server: OpenAIServer, recorded: int, threads: int) -> None:
    """Wait until ``recorded`` requests are logged and their handler threads have exited."""
    deadline = time.monotonic() + 30
    while server.timing_log.recorded_total < recorded or threading.active_count() > threads:
        assert time.monotonic() < deadline, "handler threads did not finish"
        time.sleep(0.01)
    gc.collect()


def _net(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, all_frames: bool
) -> tuple[int, int, str]:
    """Net (bytes, blocks, top three sites) of blocks allocated under llmsys.aging code.

    ``all_frames``: any frame of the allocation's traceback is llmsys.aging code (the
    handler threads' whole call trees: http.server, json, ...), else the allocating frame.
    """
    keep = [tracemalloc.Filter(True, "*/llmsys/aging/*", all_frames=all_frames)]
    diff = after.filter_traces(keep).compare_to(before.filter_traces(keep), "lineno")
    top = "; ".join(str(d) for d in diff[:3])
    return sum(d.size_diff for d in diff), sum(d.count_diff for d in diff), top


def test_control_server_heap_is_flat_per_request(control_server: OpenAIServer) -> None:
    threads = threading.active_count()
    for i in range(_WARMUP_REQUESTS):
        _request(control_server, i)
    _settle(control_server, _WARMUP_REQUESTS, threads)
    tracemalloc.start(_TRACE_FRAMES)
    try:
        before = tracemalloc.take_snapshot()
        for i in range(_WARMUP_REQUESTS, _WARMUP_REQUESTS + _MEASURED_REQUESTS):
            _request(control_server, i)
        _settle(control_server, _WARMUP_REQUESTS + _MEASURED_REQUESTS, threads)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    own_bytes, own_blocks, own_top = _net(before, after, all_frames=False)
    assert own_bytes <= _OWN_NET_BYTES_MAX and own_blocks <= _OWN_NET_BLOCKS_MAX, own_top
    tree_bytes, _, tree_top = _net(before, after, all_frames=True)
    assert tree_bytes <= _TREE_NET_BYTES_PER_REQUEST_MAX * _MEASURED_REQUESTS, tree_top
    # The log still answers with every request's timings.
    assert len(control_server.timings()) == _WARMUP_REQUESTS + _MEASURED_REQUESTS
