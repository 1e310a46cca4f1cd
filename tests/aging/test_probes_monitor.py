"""Monitor: parallel sampling, gap honesty, process trees, GPU replay, and its file format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
from probe_helpers import MIB, get_json, read_columns

from llmsys.aging.deployments import DeploymentKind, DeploymentProcess, DeploymentSpec, free_port
from llmsys.aging.gpu import GpuSnapshot, RecordingGpuBackend, ReplayGpuBackend
from llmsys.aging.monitor import Monitor, MonitorConfig, MonitorTarget
from llmsys.aging.probe_errors import ProbeConfigError
from llmsys.aging.procfs import ProcessTree, parse_smaps_rollup, parse_status, scrape_prometheus

SMAPS = """55d0c0a00000-7ffd5a1fe000 ---p 00000000 00:00 0                          [rollup]
Rss:              123456 kB
Pss:               65432 kB
Pss_Anon:          50000 kB
Pss_File:          15432 kB
Shared_Clean:       1000 kB
Anonymous:         50100 kB
Swap:                 12 kB
SwapPss:              10 kB
"""
STATUS = """Name:\tpython
VmRSS:\t  123456 kB
RssAnon:\t   50100 kB
RssFile:\t   73356 kB
RssShmem:\t       0 kB
VmSwap:\t      12 kB
Threads:\t3
"""


def _jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_parsers_read_kilobytes_as_bytes() -> None:
    assert parse_smaps_rollup(SMAPS) == {
        "pss_bytes": 65432 * 1024,
        "pss_anon_bytes": 50000 * 1024,
        "anon_bytes": 50100 * 1024,
        "swap_bytes": 12 * 1024,
        "swap_pss_bytes": 10 * 1024,
    }
    assert parse_status(STATUS) == {
        "rss_anon_bytes": 50100 * 1024,
        "rss_file_bytes": 73356 * 1024,
        "rss_shmem_bytes": 0,
        "vm_swap_bytes": 12 * 1024,
    }


def test_no_sample_is_lost_while_a_target_is_killed_and_restarted(tmp_path: Path) -> None:
    spec = DeploymentSpec("victim", DeploymentKind.INJECTOR, {"kind": "control"})
    steady = DeploymentSpec("steady", DeploymentKind.INJECTOR, {"kind": "control"})
    with (
        DeploymentProcess(spec, tmp_path / "victim.log") as victim,
        DeploymentProcess(steady) as other,
    ):
        victim.start()
        other.start()
        victim.wait_ready(60)
        other.wait_ready(60)
        first_pid = victim.current_pid()
        targets = [
            MonitorTarget("victim", victim.current_pid, victim.metrics_url),
            MonitorTarget("steady", other.current_pid, other.metrics_url),
        ]
        cfg = MonitorConfig(interval_s=0.25, detail_interval_s=0.5, scrape_timeout_s=0.2)
        with Monitor(targets, tmp_path / "mon", cfg) as monitor:
            time.sleep(2.0)  # up
            victim.kill()  # crash: SIGKILL
            time.sleep(1.5)  # down
            victim.start()  # same port, new PID
            victim.wait_ready(60)
            time.sleep(2.0)  # up again
        second_pid = victim.current_pid()
    assert first_pid != second_pid

    samples = _jsonl(tmp_path / "mon" / "samples.jsonl")
    rows = [s for s in samples if s["target"] == "victim"]
    ticks = [s["tick"] for s in rows]
    # one record per tick, none skipped, none doubled
    assert ticks == list(range(len(ticks)))
    assert len(ticks) >= (2.0 + 1.5 + 2.0) / 0.25 - 2
    # the CSV has the same rows, t strictly increasing (the statistics' reader needs that)
    csv = read_columns(monitor.csv_path("victim"))
    assert len(csv["t"]) == len(rows)
    assert np.all(np.diff(csv["t"]) > 0)
    # missed ticks are the crash window only, and carry no values
    missed = [s for s in rows if s["missed"]]
    assert missed, "the kill must show up as missed ticks"
    assert {s["reason"] for s in missed} <= {"down", "vanished"}
    assert 1.5 / 0.25 - 2 <= len(missed) <= (1.5 + 3.0) / 0.25
    for s in missed:
        assert "rss_bytes" not in s
    is_missed = np.array([s["missed"] for s in rows])
    assert np.all(np.isnan(csv["rss_bytes"][is_missed]))
    assert np.all(np.isfinite(csv["rss_bytes"][~is_missed]))
    # samples before the crash are of the first PID, after the restart of the second
    pids = [s["pid"] for s in rows if not s["missed"]]
    assert pids[0] == first_pid and pids[-1] == second_pid
    assert set(pids) == {first_pid, second_pid}
    # the restarted server's counters start again from zero: no value was carried over
    first_after = next(s for s in rows if s.get("pid") == second_pid and not s["missed"])
    assert first_after.get("requests") in (None, 0.0)
    # the other target did not miss a tick
    steady_rows = [s for s in samples if s["target"] == "steady"]
    assert not any(s["missed"] for s in steady_rows)
    events = _jsonl(tmp_path / "mon" / "events.jsonl")
    assert [e["pid"] for e in events if e["event"] == "pid" and e["target"] == "victim"] == [
        first_pid,
        second_pid,
    ]


def test_ticks_the_sampler_overslept_are_recorded_as_late_not_invented(tmp_path: Path) -> None:
    calls = {"n": 0}

    def slow_once() -> int:
        calls["n"] += 1
        if calls["n"] == 3:
            time.sleep(0.65)  # tick 2 (0.4 s) stalls past ticks 3 and 4 (interval 0.2 s)
        return os.getpid()

    cfg = MonitorConfig(interval_s=0.2, detail_interval_s=0.2, scrape_timeout_s=0.1)
    monitor = Monitor([MonitorTarget("me", slow_once)], tmp_path, cfg)
    monitor.run_for(2.0)
    rows = [s for s in _jsonl(tmp_path / "samples.jsonl") if s["target"] == "me"]
    assert [s["tick"] for s in rows] == list(range(len(rows)))
    late = [s for s in rows if s["reason"] == "late"]
    # tick 2 stalled from 0.4 s to ~1.05 s: ticks 3 (0.6 s) and 4 (0.8 s) were overtaken by
    # their successors; tick 5 (1.0 s) is sampled a little late, which is still its own
    # sample (a loaded machine may add more late ticks, never fewer)
    late_ticks = {s["tick"] for s in late}
    assert {3, 4} <= late_ticks and 2 not in late_ticks
    for s in late:  # the schedule is all that is known of a late tick
        assert s["t"] == pytest.approx(s["tick"] * 0.2)
        assert "wall_time_s" not in s and "rss_bytes" not in s
    assert np.all(np.diff(read_columns(tmp_path / "me.csv")["t"]) > 0)


def test_process_tree_counts_children(tmp_path: Path) -> None:
    code = (
        "import subprocess, sys, time; "
        "c = subprocess.Popen([sys.executable, '-c', "
        "'import time; b = bytearray(b\"x\") * (64 << 20); time.sleep(60)']); "
        "time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        tree = ProcessTree(parent.pid, tree_refresh_s=0.0)
        deadline = time.monotonic() + 20
        # The tree's RSS passes 64 MiB (parent + child) while the child is still filling its
        # buffer, so wait for the anonymous memory itself: it reaches 64 MiB only if the
        # child's pages are counted.
        while True:
            fast = tree.sample_fast()
            detail = tree.sample_detail()
            if fast["tree_processes"] == 2 and detail["anon_bytes"] >= 64 * MIB:
                break
            assert time.monotonic() < deadline, f"child never counted: {fast} {detail}"
            time.sleep(0.1)
        assert len(tree.member_pids()) == 2
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()


def test_gpu_replay_feeds_per_process_and_device_columns(tmp_path: Path) -> None:
    me = os.getpid()
    snaps = [
        GpuSnapshot(0.0, ((1000, 8000),), {me: 100, 999_999: 5}),
        GpuSnapshot(0.5, ((3000, 8000),), {me: 300}),
    ]
    record = tmp_path / "gpu.jsonl"
    recorder = RecordingGpuBackend(ReplayGpuBackend(snaps), record)
    assert [recorder.sample(t) for t in (0.1, 0.7)] == snaps
    replay = ReplayGpuBackend.from_file(record)  # what was recorded plays back
    assert replay.sample(-1.0) is None and replay.sample(0.6) == snaps[1]

    cfg = MonitorConfig(interval_s=0.25, detail_interval_s=0.25, scrape_timeout_s=0.1)
    monitor = Monitor([MonitorTarget.for_pid(me, "me")], tmp_path / "mon", cfg, gpu=replay)
    monitor.run_for(1.3)
    me_csv = read_columns(monitor.csv_path("me"))
    expected = np.where(me_csv["t"] < 0.5, 100, 300)
    np.testing.assert_array_equal(me_csv["gpu_bytes"], expected)
    host = read_columns(monitor.csv_path("host"))
    assert set(host["gpu0_used_bytes"]) <= {1000.0, 3000.0}


def test_a_real_nvml_recording_replays_into_the_monitor(tmp_path: Path) -> None:
    # Recorded on an NVIDIA H200 by the monitor itself (NvmlBackend + RecordingGpuBackend):
    # PID 429 created a CUDA context and allocated 1 GiB at t = 0.5, 2.5 and 4.5 s.
    recording = Path(__file__).parent / "data" / "nvml_h200_recording.jsonl"
    replay = ReplayGpuBackend.from_file(recording).with_pids({429: os.getpid()})
    steps = {replay.sample(t).processes.get(os.getpid(), 0) for t in (1.0, 3.0, 5.0)}  # type: ignore[union-attr]
    assert sorted(b - min(steps) for b in steps) == [0, 1 << 30, 2 << 30]
    cfg = MonitorConfig(interval_s=0.25, detail_interval_s=0.25, scrape_timeout_s=0.1)
    monitor = Monitor([MonitorTarget.for_pid(os.getpid(), "me")], tmp_path, cfg, gpu=replay)
    monitor.run_for(2.9)
    c = read_columns(monitor.csv_path("me"))
    seen = c["gpu_bytes"][c["t"] >= 0.6]
    assert set(seen) <= {1616904192.0, 2690646016.0} and 2690646016.0 in set(seen)
    assert read_columns(monitor.csv_path("host"))["gpu0_used_bytes"][-1] > 2 << 30


def test_monitor_exposes_its_own_metrics_and_its_csv_loads_in_the_statistics(
    tmp_path: Path,
) -> None:
    from llmsys.aging.csvio import load_deployment_csv

    port = free_port()
    cfg = MonitorConfig(
        interval_s=0.1, detail_interval_s=0.1, scrape_timeout_s=0.1, metrics_port=port
    )
    monitor = Monitor([MonitorTarget.for_pid(os.getpid(), "me")], tmp_path, cfg)
    with monitor:
        time.sleep(1.5)
        scraped = scrape_prometheus(f"http://127.0.0.1:{port}/metrics", 2.0)
    assert scraped["llmsys_monitor_samples_total"] >= 20  # me + host
    assert scraped["llmsys_monitor_rss_bytes"] > 10 * MIB
    dep = load_deployment_csv(monitor.csv_path("me"))
    assert dep.name == "me"
    assert {"rss_bytes", "pss_bytes", "anon_bytes", "fds", "cpu_fraction"} <= set(dep.metrics)
    host = read_columns(monitor.csv_path("host"))
    assert np.nanmin(host["monitor_rss_bytes"]) > 0


def test_scrape_failures_leave_counters_missing(tmp_path: Path) -> None:
    dead = "http://127.0.0.1:9/metrics"  # discard port: nothing listens
    cfg = MonitorConfig(interval_s=0.2, detail_interval_s=0.2, scrape_timeout_s=0.1)
    monitor = Monitor([MonitorTarget.for_pid(os.getpid(), "me", dead)], tmp_path, cfg)
    monitor.run_for(0.7)
    c = read_columns(monitor.csv_path("me"))
    assert np.all(np.isnan(c["requests"])) and np.all(np.isfinite(c["rss_bytes"]))


def test_injector_metrics_reach_the_requests_and_tokens_columns(tmp_path: Path) -> None:
    spec = DeploymentSpec("inj", DeploymentKind.INJECTOR, {"kind": "control"})
    with DeploymentProcess(spec) as dep:
        dep.start()
        dep.wait_ready(60)
        cfg = MonitorConfig(interval_s=0.2, detail_interval_s=0.2, scrape_timeout_s=0.2)
        monitor = Monitor([MonitorTarget("inj", dep.current_pid, dep.metrics_url)], tmp_path, cfg)
        body = json.dumps({"prompt": "a b", "max_tokens": 3}).encode()
        with monitor:
            for _ in range(5):
                req = urllib.request.Request(
                    dep.url + "/v1/completions", body, {"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(req) as resp:
                    assert json.loads(resp.read())["usage"]["completion_tokens"] == 3
            time.sleep(0.6)
        assert get_json(dep.url + "/debug/engine")["requests"] == 5
    c = read_columns(monitor.csv_path("inj"))
    assert np.nanmax(c["requests"]) == 5 and np.nanmax(c["tokens"]) == 15


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interval_s": 0.0},
        {"interval_s": 1.0, "detail_interval_s": 2.5},
        {"interval_s": 1.0, "scrape_timeout_s": 2.0},
        {"tree_refresh_s": -1.0},
    ],
)
def test_bad_monitor_configs_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ProbeConfigError):
        MonitorConfig(**kwargs)


def test_duplicate_or_reserved_target_names_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ProbeConfigError):
        Monitor([MonitorTarget.for_pid(1, "a"), MonitorTarget.for_pid(2, "a")], tmp_path)
    with pytest.raises(ProbeConfigError):
        MonitorTarget.for_pid(1, "host")
