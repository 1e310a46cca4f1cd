"""Load generator: TTFT against the server's own clock, seeded replay, loops, errors."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from probe_helpers import get_json

from llmsys.aging.deployments import DeploymentKind, DeploymentProcess, DeploymentSpec
from llmsys.aging.loadgen import (
    ArrivalProcess,
    Endpoint,
    LatencyHistogram,
    LoadConfig,
    LoadProgress,
    run_load,
)
from llmsys.aging.monitor import Monitor, MonitorConfig, MonitorTarget
from llmsys.aging.probe_errors import ProbeConfigError


@pytest.fixture(scope="module")
def slow_first_token() -> Iterator[DeploymentProcess]:
    # 300 ms before the first token, 20 ms between tokens: TTFT must be ~0.3 s, not ~0.
    cfg = {"kind": "control", "first_token_delay_s": 0.3, "token_delay_s": 0.02}
    with DeploymentProcess(DeploymentSpec("ttft", DeploymentKind.INJECTOR, cfg)) as dep:
        dep.start()
        dep.wait_ready(60)
        yield dep


def _records(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("endpoint", list(Endpoint))
def test_ttft_matches_the_servers_first_chunk_time(
    slow_first_token: DeploymentProcess, endpoint: Endpoint, tmp_path: Path
) -> None:
    cfg = LoadConfig(
        url=slow_first_token.url,
        arrival=ArrivalProcess.CLOSED,
        concurrency=1,
        duration_s=30,
        max_requests=4,
        endpoint=endpoint,
        output_tokens_median=5,
        output_tokens_sigma=0.0,
    )
    summary = run_load(cfg, tmp_path)
    assert summary.requests_ok == 4 and summary.tokens == 20
    server = {t["id"]: t for t in get_json(slow_first_token.url + "/debug/requests")["requests"]}
    for rec in _records(tmp_path):
        truth = server[rec["id"]]
        # the first chunk arrives when the server wrote it (same host clock, TCP_NODELAY)
        assert rec["first_chunk_wall_s"] == pytest.approx(truth["first_chunk_s"], abs=0.02)
        # and TTFT is the server's own request -> first chunk time plus connection set-up
        server_ttft = truth["first_chunk_s"] - truth["received_s"]
        assert server_ttft == pytest.approx(0.3, abs=0.05)
        assert rec["ttft_s"] == pytest.approx(server_ttft, abs=0.02)
        assert rec["tokens"] == 5
        assert rec["itl_mean_s"] == pytest.approx(0.02, abs=0.015)


def test_same_seed_same_requests(slow_first_token: DeploymentProcess, tmp_path: Path) -> None:
    def plan(seed: int, out: Path) -> list[tuple[object, ...]]:
        cfg = LoadConfig(
            url=slow_first_token.url,
            rate_rps=50.0,
            duration_s=5,
            max_requests=6,
            seed=seed,
            output_tokens_median=2,
            output_tokens_max=3,
        )
        run_load(cfg, out)
        recs = sorted(_records(out), key=lambda r: r["i"])  # type: ignore[arg-type, return-value]
        return [(r["i"], r["scheduled_s"], r["prompt_words"], r["max_tokens"]) for r in recs]

    a, b, c = plan(7, tmp_path / "a"), plan(7, tmp_path / "b"), plan(8, tmp_path / "c")
    assert a == b and len(a) == 6
    assert a != c


def test_open_loop_drops_instead_of_queueing(
    slow_first_token: DeploymentProcess, tmp_path: Path
) -> None:
    # Each request takes > 0.3 s; 20 arrivals/s with room for one in flight must drop most.
    cfg = LoadConfig(
        url=slow_first_token.url,
        rate_rps=20.0,
        duration_s=1.5,
        max_in_flight=1,
        output_tokens_median=1,
        output_tokens_sigma=0.0,
        seed=3,
    )
    summary = run_load(cfg, tmp_path)
    recs = _records(tmp_path)
    assert summary.requests_dropped > summary.requests_ok >= 1
    assert len(recs) == summary.requests_ok + summary.requests_dropped + summary.requests_error
    assert summary.requests_ok <= math.ceil(1.5 / 0.3) + 1


def test_closed_loop_keeps_its_concurrency(
    slow_first_token: DeploymentProcess, tmp_path: Path
) -> None:
    cfg = LoadConfig(
        url=slow_first_token.url,
        arrival=ArrivalProcess.CLOSED,
        concurrency=3,
        duration_s=30,
        max_requests=9,
        output_tokens_median=1,
        output_tokens_sigma=0.0,
    )
    run_load(cfg, tmp_path)
    recs = sorted(_records(tmp_path), key=lambda r: r["start_s"])  # type: ignore[arg-type, return-value]
    assert len(recs) == 9
    # three waves of three: requests 0-2 start together, 3-5 after the first wave ends
    first_wave_end = min(r["start_s"] + r["e2e_s"] for r in recs[:3])  # type: ignore[operator]
    assert max(r["start_s"] for r in recs[:3]) < first_wave_end  # type: ignore[type-var]
    assert min(r["start_s"] for r in recs[3:]) >= first_wave_end - 0.01  # type: ignore[type-var]


def test_client_counts_feed_a_monitor_target_without_metrics(
    slow_first_token: DeploymentProcess, tmp_path: Path
) -> None:
    from probe_helpers import read_columns

    progress = LoadProgress()
    # no metrics_url: the requests/tokens columns come from the client's own counts
    target = MonitorTarget("noprom", slow_first_token.current_pid, counters=progress.counts)
    cfg = MonitorConfig(interval_s=0.2, detail_interval_s=0.2, scrape_timeout_s=0.1)
    load = LoadConfig(
        url=slow_first_token.url,
        arrival=ArrivalProcess.CLOSED,
        max_requests=4,
        duration_s=30,
        output_tokens_median=2,
        output_tokens_sigma=0.0,
    )
    with Monitor([target], tmp_path / "mon", cfg) as monitor:
        summary = run_load(load, tmp_path / "load", progress=progress)
        time.sleep(0.5)
    assert progress.counts() == (4.0, 8.0) == (summary.requests_ok, summary.tokens)
    c = read_columns(monitor.csv_path("noprom"))
    assert c["requests"][-1] == 4 and c["tokens"][-1] == 8
    assert np.all(np.diff(c["requests"]) >= 0) and c["requests"][0] < 4


def test_errors_are_recorded_not_raised(tmp_path: Path) -> None:
    cfg = LoadConfig(
        url="http://127.0.0.1:9", arrival=ArrivalProcess.CLOSED, duration_s=5, max_requests=3
    )
    summary = run_load(cfg, tmp_path)
    assert summary.requests_error == 3 and summary.requests_ok == 0
    assert all("error" in r for r in _records(tmp_path))


def test_http_errors_are_recorded_with_their_status(
    slow_first_token: DeploymentProcess, tmp_path: Path
) -> None:
    cfg = LoadConfig(
        url=slow_first_token.url,
        arrival=ArrivalProcess.CLOSED,
        duration_s=5,
        max_requests=2,
        output_tokens_median=5000,
        output_tokens_sigma=0.0,
        output_tokens_max=5000,
    )
    summary = run_load(cfg, tmp_path)
    assert summary.requests_error == 2
    assert {r["http_status"] for r in _records(tmp_path)} == {400}


def test_client_memory_is_sampled(slow_first_token: DeploymentProcess, tmp_path: Path) -> None:
    cfg = LoadConfig(
        url=slow_first_token.url,
        rate_rps=5.0,
        duration_s=2.2,
        output_tokens_median=1,
        output_tokens_sigma=0.0,
    )
    summary = run_load(cfg, tmp_path)
    lines = (tmp_path / "client.csv").read_text().splitlines()
    assert lines[0] == "t,rss_bytes,cpu_s,in_flight,requests"
    assert len(lines) >= 3
    assert summary.client_rss_max_bytes >= summary.client_rss_start_bytes > 0


@given(st.lists(st.floats(1e-5, 1e3), min_size=1, max_size=200), st.floats(0.0, 1.0))
def test_histogram_quantile_is_a_tight_upper_bound(values: list[float], q: float) -> None:
    hist = LatencyHistogram()
    for v in values:
        hist.add(v)
    est = hist.quantile(q)
    assert est is not None
    ordered = sorted(values)
    true = ordered[max(0, math.ceil(q * len(values)) - 1)]
    assert true <= est * (1 + 1e-9)
    assert est <= true * 10 ** (1 / 20) * (1 + 1e-9) or est == pytest.approx(1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"url": "ftp://x"},
        {"url": "http://h", "rate_rps": 0.0},
        {"url": "http://h", "concurrency": 0},
        {"url": "http://h", "output_tokens_sigma": -1.0},
        {"url": "http://h", "max_requests": 0},
    ],
)
def test_bad_load_configs_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ProbeConfigError):
        LoadConfig(**kwargs)  # type: ignore[arg-type]
