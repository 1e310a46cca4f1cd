"""A real runner subprocess killed with -9, then resumed: at most one interval lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmsys.aging.campaign import _terminate_group, resume_campaign, stress_done_s
from llmsys.aging.campaign_store import CampaignStore
from llmsys.aging.report import VerdictKind, analyze_campaign

INTERVAL_S = 0.25
CONFIG = f"""
name = "kill9"
duration_s = 14
baseline_s = 1
control = "control"
[sampling]
interval_s = {INTERVAL_S}
detail_interval_s = 0.5
[stress]
rate_rps = 10
output_tokens_median = 8
output_tokens_sigma = 0.0
[analysis]
metrics = ["rss_bytes"]
# the injector server's bounded 1,024-entry timing log grows ~0.5 KiB per request (~20
# MiB/h here) until it is full: real, bounded, and below what a campaign cares about
min_slope_bytes_per_h = 67108864.0
[[deployments]]
name = "leak"
kind = "injector"
config = {{ kind = "per-request", leak_bytes = 262144 }}
[[deployments]]
name = "control"
kind = "injector"
config = {{ kind = "control" }}
"""


def _runner(config: Path, root: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    boot = "import sys; from llmsys.cli.main import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", boot, "aging", "run", str(config)]
    return subprocess.Popen(
        [*argv, "--out", str(root), "--no-report"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_for_event(store: CampaignStore, name: str, timeout_s: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (store.root / "events.jsonl").exists():
            for ev in store.events():
                if ev["event"] == name:
                    return ev
        time.sleep(0.1)
    raise AssertionError(f"no {name} event after {timeout_s} s")


def _cleanup(store: CampaignStore) -> None:
    if (store.root / "events.jsonl").exists():
        for ev in store.events():
            if ev["event"] == "deployment_up" and ev.get("pid"):
                _terminate_group(int(ev["pid"]), grace_s=2.0)


def test_kill9_of_the_runner_loses_at_most_one_interval_and_resume_adopts(
    tmp_path: Path,
) -> None:
    config = tmp_path / "campaign.toml"
    config.write_text(CONFIG)
    store = CampaignStore(tmp_path / "run")
    runner = _runner(config, store.root)
    try:
        start = _wait_for_event(store, "stress_start", 60)
        # 5 s into the stress, kill the runner with no chance to flush anything
        time.sleep(max(0.0, float(start["wall_time_s"]) + 5.0 - time.time()))  # type: ignore[arg-type]
        killed_at = time.time()
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait(10)
        lost = store.rows_missing_before(0, killed_at)
        assert set(lost) == {"leak", "control", "host"}
        assert max(lost.values()) <= 1, lost
        seg0 = {p.name: p.read_bytes() for p in store.segment_dir(0).glob("*.csv")}
        done = stress_done_s(store)
        assert 4.0 <= done <= 6.0
        # the deployments outlived the runner: resume adopts them, memory keeps ageing
        result = resume_campaign(store.root)
        assert set(result.adopted) == {"leak", "control"}
        assert result.complete
        assert result.stress_done_s == pytest.approx(14.0, abs=INTERVAL_S * 2)
    finally:
        if runner.poll() is None:
            runner.kill()
        _cleanup(store)
    # append-only: the killed segment's rows are untouched by the resume
    assert {p.name: p.read_bytes() for p in store.segment_dir(0).glob("*.csv")} == seg0
    kinds = [ev["event"] for ev in store.events()]
    assert kinds.count("segment_start") == 2 and kinds[-1] == "complete"
    analysis = analyze_campaign(store.root)
    leak = analysis.verdict("leak", "rss_bytes")
    assert leak.verdict is VerdictKind.AGING
    # 256 KiB per request across both segments (the counter continues: same server)
    assert leak.slope_per_1k_requests == pytest.approx(262144 * 1000, rel=0.10)
    control = analysis.verdict("control", "rss_bytes")
    assert control.verdict in (VerdictKind.CLEAN, VerdictKind.NEGLIGIBLE)
    assert abs(control.slope_per_h) < 64 * 2**20
    up = [ev for ev in store.events() if ev["event"] == "deployment_up"]
    assert [ev["how"] for ev in up] == ["started", "started", "adopted", "adopted"]
    assert json.loads((store.root / "campaign.json").read_text())["config"]["name"] == "kill9"
