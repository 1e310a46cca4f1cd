"""Durable storage round trip and report generation on a campaign written by hand.

Two segments (a run killed mid-way and a resume 5 s later, wall clock) of three
deployments with exact known behaviour: a leak of 100 KiB per request, a cache of 100 KiB
per request bounded at 1,200 entries (full 60 % into the stress), and a flat control whose
server was restarted at the resume (its request counter starts again at 0).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from llmsys.aging.campaign_config import CampaignConfig, CampaignError
from llmsys.aging.campaign_store import CampaignStore
from llmsys.aging.csvio import load_deployment_csv
from llmsys.aging.growth import Growth
from llmsys.aging.report import VerdictKind, analyze_campaign, write_report

MIB, KIB = 1 << 20, 1 << 10
RATE_RPS, ROWS, DT_S = 5.0, 400, 0.5
CREATED = 1_700_000_000.0
SEG_T0 = (CREATED + 1.0, CREATED + 1.0 + ROWS * DT_S + 5.0)


def _config() -> CampaignConfig:
    return CampaignConfig.from_dict(
        {
            "name": "handmade",
            "duration_s": 2 * ROWS * DT_S,
            "control": "control",
            "sampling": {"interval_s": DT_S, "detail_interval_s": DT_S},
            "analysis": {"metrics": ["rss_bytes"], "capacity_bytes": 8 << 30},
            "deployments": [{"name": n, "kind": "injector"} for n in ("leak", "cache", "control")],
        }
    )


def _write_segment(store: CampaignStore, segment: int, rng: np.random.Generator) -> None:
    seg = store.segment_dir(store.new_segment())
    (seg / "events.jsonl").write_text(
        json.dumps({"event": "start", "t": 0.0, "wall_time_s": SEG_T0[segment]}) + "\n"
    )
    t = np.arange(ROWS) * DT_S
    # leak and cache were adopted at the resume: their counters go on; control restarted
    before = segment * ROWS * DT_S * RATE_RPS
    for name in ("leak", "cache", "control"):
        req = np.floor(t * RATE_RPS) + (0.0 if name == "control" else before)
        held = {"leak": req, "cache": np.minimum(req, 1200), "control": 0 * req}[name]
        rss = 100 * MIB + held * 100 * KIB + rng.normal(0, 20 * KIB, ROWS)
        lines = ["t,requests,tokens,rss_bytes"]
        lines += [
            f"{a:.6f},{r:.0f},{16 * r:.0f},{y:.0f}" for a, r, y in zip(t, req, rss, strict=True)
        ]
        text = "\n".join(lines) + "\n"
        if segment == 0 and name == "leak":
            text += "200.000000,1000,160"  # torn by kill -9: no newline, must be ignored
        (seg / f"{name}.csv").write_text(text)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("campaign")
    store = CampaignStore.create(root, _config(), 8 << 30, CREATED)
    rng = np.random.default_rng(7)
    _write_segment(store, 0, rng)
    _write_segment(store, 1, rng)
    store.append_event({"event": "crash", "name": "control", "wall_time_s": SEG_T0[1] - 2})
    return root


def test_merge_joins_segments_on_one_clock_with_continuous_counters(campaign: Path) -> None:
    store = CampaignStore(campaign)
    control = load_deployment_csv(store.merge("control"))
    leak = load_deployment_csv(store.merge("leak"))
    assert leak.t_s.shape == (2 * ROWS,)  # the torn row was dropped
    assert leak.t_s[0] == pytest.approx(1.0)
    assert leak.t_s[ROWS] == pytest.approx(SEG_T0[1] - CREATED)
    assert np.all(np.diff(leak.t_s) > 0)
    assert control.requests is not None and np.all(np.diff(control.requests) >= 0)
    # control restarted: 1,000 requests before + 995 after = what the server really served
    assert control.requests[-1] == pytest.approx(999 + 995)


def test_config_record_and_refusals(campaign: Path) -> None:
    store = CampaignStore(campaign)
    assert store.config() == _config()
    with pytest.raises(CampaignError, match="already holds"):
        CampaignStore.create(campaign, _config(), 1, CREATED)
    with pytest.raises(CampaignError, match="not a campaign"):
        CampaignStore(campaign / "segments").record()


def test_verdicts_find_the_leak_rate_the_cache_bound_and_a_clean_control(campaign: Path) -> None:
    analysis = analyze_campaign(campaign)
    leak = analysis.verdict("leak", "rss_bytes")
    assert leak.verdict is VerdictKind.AGING and leak.growth is Growth.LINEAR
    assert leak.slope_per_1k_requests == pytest.approx(100_000 * KIB, rel=0.02)
    assert leak.slope_ci_per_1k_requests is not None
    low, high = leak.slope_ci_per_1k_requests
    assert low <= 100_000 * KIB <= high
    assert leak.tte_h is not None and leak.tte_h > 0
    assert leak.above_control
    cache = analysis.verdict("cache", "rss_bytes")
    assert cache.verdict is VerdictKind.BOUNDED and cache.growth is Growth.SATURATING
    assert cache.tte_h is None
    control = analysis.verdict("control", "rss_bytes")
    assert control.verdict is VerdictKind.CLEAN
    assert control.excess_per_h_vs_control == 0.0


def test_report_is_self_contained_html_markdown_and_plots(campaign: Path) -> None:
    paths = write_report(campaign)
    page = paths["html"].read_text()
    assert "<table>" in page and "leak" in page and "saturating" in page
    # opens with no network: no remote URL, every image a local file that exists
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page)
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 3
    for rel in images:
        png = (campaign / "report" / rel).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5_000
    md = paths["markdown"].read_text()
    assert "| leak | rss_bytes | aging | linear |" in md
    doc = json.loads(paths["json"].read_text())
    assert {v["verdict"] for v in doc["verdicts"]} == {"aging", "bounded", "clean"}


def test_cli_report_writes_the_report_and_rejects_a_foreign_dir(
    campaign: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmsys.cli.main import main

    assert main(["aging", "report", str(campaign)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"leak\s+rss_bytes\s+aging\s+linear", out)
    assert main(["aging", "report", str(tmp_path)]) == 2
    assert "not a campaign directory" in capsys.readouterr().err
    assert main(["aging", "resume", str(tmp_path)]) == 2
