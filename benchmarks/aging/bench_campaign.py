"""A real aging campaign against the leak injectors and the control, killed -9 and resumed.

Usage::

    python benchmarks/aging/bench_campaign.py                    # CI-sized: 120 s of stress
    python benchmarks/aging/bench_campaign.py --duration-s 600   # longer

Five co-located injector deployments under identical Poisson load (``--rate`` req/s each):
a per-request leak (256 KiB), a per-token leak (32 KiB per token, 16 tokens per request),
an anonymous-mmap leak (256 KiB), a saturating cache (256 KiB per request, bounded so it
fills half-way through the stress) and the zero-rate control; sampled every 0.5 s. The
runner is a real ``llmsys aging run`` process, killed with SIGKILL ``--kill-at-s`` into the
stress; ``llmsys aging resume`` continues the same directory. Then the report is written.

Figures: leaks detected (verdict aging, growth linear or step, on ``rss_bytes``), the
relative error of each leak's rate per 1,000 requests (per million tokens for the per-token
leak) against the injected truth, whether the cache is classified saturating and not
aging, control false alarms (aging verdicts on the control), and the rows lost by the kill
(ticks scheduled before the kill without a row, largest per series). One campaign per run:
the rate errors are the spread, not repetitions. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from llmsys.aging.campaign_store import CampaignStore
from llmsys.aging.report import VerdictKind, analyze_campaign, write_report
from llmsys.core.provenance import config_hash, git_sha

BOOT = "import sys; from llmsys.cli.main import main; sys.exit(main(sys.argv[1:]))"
KIB = 1024
LEAKS = {  # name -> (injector config, truth per unit, unit)
    "per-request": ({"kind": "per-request", "leak_bytes": 256 * KIB}, 256 * KIB * 1e3, "1k_req"),
    "per-token": ({"kind": "per-token", "leak_bytes": 32 * KIB}, 32 * KIB * 1e6, "1m_tok"),
    "anon-mmap": ({"kind": "anon-mmap", "leak_bytes": 256 * KIB}, 256 * KIB * 1e3, "1k_req"),
}


def _toml(cfg: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)

    lines = [f"{k} = {value(v)}" for k, v in cfg.items() if not isinstance(v, (dict, list))]
    for table in ("sampling", "stress", "analysis"):
        lines += [f"[{table}]"] + [f"{k} = {value(v)}" for k, v in cfg[table].items()]
    for dep in cfg["deployments"]:
        lines += ["[[deployments]]"] + [f"{k} = {value(v)}" for k, v in dep.items()]
    return "\n".join(lines) + "\n"


def _config(duration_s: float, rate_rps: float) -> dict[str, Any]:
    cap = round(duration_s * rate_rps * 0.5) * 256 * KIB
    deployments = [
        {"name": name, "kind": "injector", "config": inj} for name, (inj, _, _) in LEAKS.items()
    ]
    deployments += [
        {"name": "cache", "kind": "injector",
         "config": {"kind": "saturating-cache", "leak_bytes": 256 * KIB, "cap_bytes": cap}},
        {"name": "control", "kind": "injector", "config": {"kind": "control"}},
    ]  # fmt: skip
    return {
        "name": "bench-campaign",
        "duration_s": duration_s,
        "baseline_s": 2.0,
        "control": "control",
        "sampling": {"interval_s": 0.5, "detail_interval_s": 2.0},
        "stress": {
            "rate_rps": rate_rps,
            "output_tokens_median": 16,
            "output_tokens_sigma": 0.0,
            "prompt_words_sigma": 0.5,
        },
        "analysis": {"metrics": ["rss_bytes", "anon_bytes"], "min_slope_bytes_per_h": 64.0 * 2**20},
        "deployments": deployments,
    }


def _cli(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen([sys.executable, "-c", BOOT, *args], stdout=sink, stderr=sink)


def _wait_event(store: CampaignStore, name: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (store.root / "events.jsonl").exists():
            for ev in store.events():
                if ev["event"] == name:
                    return ev
        time.sleep(0.1)
    raise RuntimeError(f"no {name} event after {timeout_s} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=120.0, help="seconds of stress")
    parser.add_argument("--rate", type=float, default=8.0, help="requests/s per deployment")
    parser.add_argument("--kill-at-s", type=float, default=None, help="SIGKILL (40 %% in)")
    parser.add_argument("--out", type=Path, default=Path("results/bench_campaign"))
    args = parser.parse_args(argv)
    kill_at = args.kill_at_s if args.kill_at_s is not None else 0.4 * args.duration_s
    cfg = _config(args.duration_s, args.rate)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    (args.out / "campaign.toml").write_text(_toml(cfg))
    store = CampaignStore(args.out / "campaign")
    log = args.out / "runner.log"
    t_start = time.monotonic()
    runner = _cli(["aging", "run", str(args.out / "campaign.toml"), "--out", str(store.root),
                   "--no-report"], log)  # fmt: skip
    start = _wait_event(store, "stress_start", 120)
    time.sleep(max(0.0, start["wall_time_s"] + kill_at - time.time()))
    killed_at = time.time()
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    lost = store.rows_missing_before(0, killed_at)
    resumed = _cli(["aging", "resume", str(store.root), "--no-report"], log)
    if resumed.wait() != 0:
        print(log.read_text()[-3000:], file=sys.stderr)
        return 1
    wall_s = time.monotonic() - t_start
    t0 = time.monotonic()
    analysis = analyze_campaign(store.root)
    paths = write_report(store.root, analysis)
    report_s = time.monotonic() - t0
    adopted = [e["name"] for e in store.events() if e.get("how") == "adopted"]

    print(f"{'deployment':<12} {'metric':<11} {'verdict':<10} {'growth':<10} "
          f"{'slope/1k req':>14} {'slope/1M tok':>14} {'truth':>12} {'rel.err':>8}")  # fmt: skip
    errors: dict[str, float] = {}
    detected = 0
    for v in analysis.verdicts:
        truth = ""
        err = ""
        if v.deployment in LEAKS:
            _, value, unit = LEAKS[v.deployment]
            got = v.slope_per_1k_requests if unit == "1k_req" else v.slope_per_million_tokens
            rel = abs((got or 0.0) - value) / value
            errors[f"{v.deployment}/{v.metric}"] = rel
            truth, err = f"{value / 2**20:.1f} MiB", f"{rel:.1%}"
            if v.metric == "rss_bytes" and v.verdict is VerdictKind.AGING:
                detected += 1
        k = "-" if v.slope_per_1k_requests is None else f"{v.slope_per_1k_requests / 2**20:.2f} MiB"
        m = (
            "-"
            if v.slope_per_million_tokens is None
            else f"{v.slope_per_million_tokens / 2**20:.0f} MiB"
        )
        print(f"{v.deployment:<12} {v.metric:<11} {v.verdict.value:<10} {v.growth.value:<10} "
              f"{k:>14} {m:>14} {truth:>12} {err:>8}")  # fmt: skip
    cache = analysis.verdict("cache", "rss_bytes")
    control = [analysis.verdict("control", m) for m in ("rss_bytes", "anon_bytes")]
    rss_errors = [e for key, e in errors.items() if key.endswith("/rss_bytes")]
    print(f"rows lost by kill -9 at {kill_at:.0f} s into the stress: {lost}; adopted: {adopted}")
    print(f"report: {paths['html']}")
    result = {
        "leaks_detected": detected / len(LEAKS),
        "rate_rel_error_max": max(rss_errors),
        "rate_rel_error_max_all_metrics": max(errors.values()),
        "saturating_classified": cache.verdict is VerdictKind.BOUNDED,
        "control_false_alarms": sum(c.verdict is VerdictKind.AGING for c in control),
        "control_significant_trends": sum(c.verdict is not VerdictKind.CLEAN for c in control),
        "control_rss_slope_mib_per_h": control[0].slope_per_h / 2**20,
        "samples_lost_after_kill9": max(lost.values()),
        "deployments_adopted_on_resume": len(adopted),
        "stress_s": args.duration_s,
        "wall_s": round(wall_s, 1),
        "report_s": round(report_s, 2),
        "git_sha": git_sha(),
        "config_hash": config_hash(cfg),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
