"""Injectors: exact, known memory behaviour, as the monitor sees it from outside.

The CI-sized scenario loads all six kinds at once for 20 s at 10 requests/s (~200 requests
each, 1 MiB per request) while the monitor samples them at 1 Hz; the slow variant runs the
full minute the issue names. Rates are least-squares slopes of a monitored memory figure
against the injector's own cumulative counters scraped from /metrics, compared with the
stated rate within 10 %.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from probe_helpers import MIB, age_injectors, slope

from llmsys.aging.injectors import InjectorConfig, InjectorEngine, InjectorKind
from llmsys.aging.probe_errors import ProbeConfigError

CONFIGS: dict[str, dict[str, Any]] = {
    "per-request": {"kind": "per-request", "leak_bytes": MIB, "trace_python_heap": True},
    "per-token": {"kind": "per-token", "leak_bytes": 128 * 1024},
    "anon-mmap": {"kind": "anon-mmap", "leak_bytes": MIB, "trace_python_heap": True},
    "saturating-cache": {"kind": "saturating-cache", "leak_bytes": MIB, "cap_bytes": 96 * MIB},
    "delayed-leak": {"kind": "delayed-leak", "leak_bytes": MIB, "start_after_requests": 100},
    "control": {"kind": "control"},
}


@pytest.fixture(scope="module")
def aged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return age_injectors(CONFIGS, tmp_path_factory.mktemp("aged"), duration_s=20, rate_rps=10)


def _check_rates(aged: dict[str, Any]) -> None:
    csv = aged["csv"]
    # per-request: RSS grows 1 MiB per request served.
    c = csv["per-request"]
    assert np.nanmax(c["requests"]) > 140
    assert slope(c["requests"], c["rss_bytes"]) == pytest.approx(MIB, rel=0.10)
    # per-token: 128 KiB per generated token (8 tokens per request).
    c = csv["per-token"]
    assert slope(c["tokens"], c["rss_bytes"]) == pytest.approx(128 * 1024, rel=0.10)
    # anon-mmap: the same rate in the anonymous and PSS figures of smaps_rollup.
    c = csv["anon-mmap"]
    assert slope(c["requests"], c["anon_bytes"]) == pytest.approx(MIB, rel=0.10)
    assert slope(c["requests"], c["pss_bytes"]) == pytest.approx(MIB, rel=0.10)
    assert slope(c["requests"], c["rss_anon_bytes"]) == pytest.approx(MIB, rel=0.10)
    # delayed-leak: flat for the first 100 requests, then 1 MiB per request.
    c = csv["delayed-leak"]
    before = c["requests"] <= 90
    after = c["requests"] >= 110
    assert abs(slope(c["requests"][before], c["rss_bytes"][before])) < 0.10 * MIB
    assert slope(c["requests"][after], c["rss_bytes"][after]) == pytest.approx(MIB, rel=0.10)
    # control: no growth (under 10 % of the smallest per-request leak above).
    c = csv["control"]
    assert abs(slope(c["requests"], c["rss_bytes"])) < 0.10 * MIB


def _check_saturation(aged: dict[str, Any]) -> None:
    c = aged["csv"]["saturating-cache"]
    req, rss = c["requests"], c["rss_bytes"]
    # grows at 1 MiB/request until 96 entries, then stays flat at the cap.
    filling = req <= 86
    full = req >= 106
    assert slope(req[filling], rss[filling]) == pytest.approx(MIB, rel=0.10)
    assert abs(slope(req[full], rss[full])) < 0.10 * MIB
    baseline = np.nanmin(rss[: int(np.argmax(req > 0))] if np.any(req > 0) else rss)
    plateau = np.nanmedian(rss[full])
    assert plateau - baseline == pytest.approx(96 * MIB, rel=0.10)


def test_each_injector_grows_at_its_stated_rate(aged: dict[str, Any]) -> None:
    _check_rates(aged)


def test_saturating_cache_grows_then_stops_at_its_cap(aged: dict[str, Any]) -> None:
    _check_saturation(aged)


def test_anon_mmap_is_invisible_to_tracemalloc(aged: dict[str, Any]) -> None:
    # The anonymous mapping holds ~250 MiB the monitor sees in anon/PSS (above), yet the
    # Python heap as tracemalloc traces it stays small...
    dbg = aged["debug"]["anon-mmap"]
    assert dbg["injected_bytes"] > 140 * MIB
    assert dbg["traced_current_bytes"] < 0.05 * dbg["injected_bytes"]
    # ...while the heap leak of the same size is fully visible to it (the control case).
    heap = aged["debug"]["per-request"]
    assert heap["traced_current_bytes"] >= 0.95 * heap["injected_bytes"]


def test_monitor_agrees_with_the_injected_ground_truth(aged: dict[str, Any]) -> None:
    for name, cfg in CONFIGS.items():
        c = aged["csv"][name]
        dbg = aged["debug"][name]
        expected = InjectorConfig.from_dict(cfg).expected_bytes(
            int(np.nanmax(c["requests"])), int(np.nanmax(c["tokens"]))
        )
        assert dbg["injected_bytes"] == expected, name
        growth = c["rss_bytes"][-1] - np.nanmin(c["rss_bytes"])
        assert growth == pytest.approx(expected, abs=0.10 * max(expected, 10 * MIB)), name


@pytest.mark.slow
def test_each_injector_rate_over_a_full_minute(tmp_path: Path) -> None:
    aged = age_injectors(CONFIGS, tmp_path, duration_s=60, rate_rps=5)
    _check_rates(aged)
    _check_saturation(aged)


# ------------------------------------------------------------------- unit level
def test_engine_retains_exactly_the_expected_bytes() -> None:
    cfg = InjectorConfig(
        InjectorKind.SATURATING_CACHE,
        leak_bytes=10_000,
        cap_bytes=50_000,
        first_token_delay_s=0,
        token_delay_s=0,
    )
    engine = InjectorEngine(cfg)
    for n in range(1, 9):
        _, pieces = engine.generate("a b c", 3)
        assert list(pieces) == [" t0", " t1", " t2"]
        # 10,000 B rounds up to 3 pages (12,288 B); 4 of them fit under 50,000 B.
        assert engine.debug_state()["injected_bytes"] == cfg.expected_bytes(n, 3 * n)
    assert engine.debug_state()["injected_bytes"] == 4 * 12_288


@given(
    kind=st.sampled_from(list(InjectorKind)),
    leak=st.integers(0, 1 << 22),
    cap_extra=st.integers(0, 1 << 24),
    start=st.integers(0, 50),
    requests=st.integers(0, 500),
    per_request_tokens=st.integers(0, 20),
)
def test_expected_bytes_is_monotone_and_bounded(
    kind: InjectorKind,
    leak: int,
    cap_extra: int,
    start: int,
    requests: int,
    per_request_tokens: int,
) -> None:
    cfg = InjectorConfig(
        kind, leak_bytes=leak, cap_bytes=leak + cap_extra, start_after_requests=start
    )
    now = cfg.expected_bytes(requests, requests * per_request_tokens)
    later = cfg.expected_bytes(requests + 1, (requests + 1) * per_request_tokens)
    assert 0 <= now <= later
    if kind is InjectorKind.SATURATING_CACHE:
        assert later <= cfg.cap_bytes
    if kind is InjectorKind.CONTROL:
        assert later == 0


@pytest.mark.parametrize(
    "values",
    [
        {"kind": "no-such-kind"},
        {"leak_bytes": -1},
        {"kind": "saturating-cache", "leak_bytes": 10, "cap_bytes": 5},
        {"token_delay_s": -0.1},
        {"leak_byte": 1},  # a typo must not be ignored
    ],
)
def test_bad_injector_configs_are_rejected(values: dict[str, Any]) -> None:
    with pytest.raises(ProbeConfigError):
        InjectorConfig.from_dict(values)


def test_config_round_trips_through_plain_values() -> None:
    cfg = InjectorConfig(InjectorKind.DELAYED_LEAK, leak_bytes=7, start_after_requests=3)
    assert InjectorConfig.from_dict(cfg.to_dict()) == cfg
