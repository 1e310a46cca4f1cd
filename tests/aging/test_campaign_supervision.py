"""Supervision: a deployment killed mid-campaign is recorded as a crash and restarted."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np

from llmsys.aging.campaign import run_campaign
from llmsys.aging.campaign_config import CampaignConfig
from llmsys.aging.campaign_store import CampaignStore
from llmsys.aging.csvio import load_deployment_csv


def _config(restart: bool) -> CampaignConfig:
    return CampaignConfig.from_dict(
        {
            "name": "supervised",
            "duration_s": 6.0,
            "baseline_s": 0.5,
            "control": "control",
            "restart_on_crash": restart,
            "sampling": {"interval_s": 0.25, "detail_interval_s": 0.5},
            "stress": {"rate_rps": 10.0, "output_tokens_median": 4, "output_tokens_sigma": 0.0},
            "deployments": [
                {"name": "victim", "kind": "injector", "config": {"kind": "control"}},
                {"name": "control", "kind": "injector", "config": {"kind": "control"}},
            ],
        }
    )


def _kill_victim_when_loaded(store: CampaignStore, done: threading.Event) -> None:
    while not done.is_set():
        if (store.root / "events.jsonl").exists():
            events = store.events()
            if any(e["event"] == "stress_start" for e in events):
                time.sleep(2.0)
                pid = next(e["pid"] for e in events if e.get("name") == "victim")
                os.kill(pid, signal.SIGKILL)  # the server process dies, as in an OOM kill
                return
        time.sleep(0.05)


def test_crash_is_recorded_restarted_and_counters_stay_cumulative(tmp_path: Path) -> None:
    store = CampaignStore(tmp_path / "c")
    done = threading.Event()
    killer = threading.Thread(target=_kill_victim_when_loaded, args=(store, done))
    killer.start()
    try:
        result = run_campaign(_config(restart=True), store.root)
    finally:
        done.set()
        killer.join()
    assert result.complete and result.crashes == 1
    events = store.events()
    crash = [e for e in events if e["event"] == "crash"]
    assert [e["name"] for e in crash] == ["victim"]
    ups = [(e["name"], e["how"]) for e in events if e["event"] == "deployment_up"]
    assert ups == [("victim", "started"), ("control", "started"), ("victim", "restarted")]
    # the restarted server counts from 0 again; the merged counter keeps rising
    dep = load_deployment_csv(store.merge("victim"))
    assert dep.requests is not None
    req = dep.requests[np.isfinite(dep.requests)]
    assert np.all(np.diff(req) >= 0)
    header, rows = store.read_segment_rows(0, "victim")
    raw = np.array(
        [float(r[header.index("requests")]) for r in rows if r[header.index("requests")]]
    )
    fell = int(np.argmax(np.diff(raw) < 0)) + 1
    assert raw[fell] < raw[fell - 1]  # the raw counter did restart
    assert req[-1] == raw[-1] + raw[fell - 1]  # merged = after restart + before crash


def test_without_restart_the_crashed_deployment_is_left_down(tmp_path: Path) -> None:
    store = CampaignStore(tmp_path / "c")
    done = threading.Event()
    killer = threading.Thread(target=_kill_victim_when_loaded, args=(store, done))
    killer.start()
    try:
        result = run_campaign(_config(restart=False), store.root)
    finally:
        done.set()
        killer.join()
    kinds = [(e["event"], e.get("name")) for e in store.events()]
    assert ("crash", "victim") in kinds and ("left_down", "victim") in kinds
    assert result.crashes == 1
    # rows go on after the crash, marked missing (empty metric cells), never invented
    header, rows = store.read_segment_rows(0, "victim")
    rss = [r[header.index("rss_bytes")] for r in rows]
    assert rss[-1] == "" and rss[0] != ""
