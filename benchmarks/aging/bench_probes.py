"""Overhead of the aging probes (issue 12): the monitor and the load generator.

Usage::

    python benchmarks/aging/bench_probes.py                   # 600 s run (the documented one)
    python benchmarks/aging/bench_probes.py --duration-s 60   # CI-sized

Six injector deployments (``control`` kind: a real HTTP server, no leak) are watched at 1 Hz
by two ``llmsys aging monitor`` processes at once - the default (descendants re-discovered
every 5 s) and the baseline that re-scans /proc for descendants every tick - while one
``llmsys aging load`` process drives deployment 0 with open-loop Poisson arrivals. This
script samples each of the three processes' CPU time and RSS once a second from outside
(psutil). After ``--warmup-s``: CPU fraction of one core (whole-window mean, and the median
and p99 of the per-second values), RSS growth in MiB/h (least-squares slope), and the load
generator's CPU ms per request. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from llmsys.aging.deployments import DeploymentKind, DeploymentProcess, DeploymentSpec
from llmsys.core.provenance import config_hash, git_sha

BOOT = "import sys; from llmsys.cli.main import main; sys.exit(main(sys.argv[1:]))"


def _cli(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen([sys.executable, "-c", BOOT, *args], stdout=sink, stderr=sink)


def _stats(samples: list[tuple[float, float, int]], warmup_s: float) -> dict[str, float]:
    """CPU fraction and RSS growth from (t_s, cpu_s, rss_bytes) samples after the warm-up."""
    kept = [s for s in samples if s[0] >= warmup_s]
    t = np.array([s[0] for s in kept])
    cpu = np.array([s[1] for s in kept])
    rss = np.array([s[2] for s in kept], dtype=np.float64)
    per_s = np.diff(cpu) / np.diff(t)
    return {
        "cpu_fraction": float((cpu[-1] - cpu[0]) / (t[-1] - t[0])),
        "cpu_fraction_p50": float(np.median(per_s)),
        "cpu_fraction_p99": float(np.quantile(per_s, 0.99)),
        "rss_start_mib": float(rss[0] / 2**20),
        "rss_end_mib": float(rss[-1] / 2**20),
        "rss_growth_mib_per_h": float(np.polyfit(t / 3600.0, rss / 2**20, 1)[0]),
        "window_s": float(t[-1] - t[0]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=600.0, help="measured run length")
    parser.add_argument("--warmup-s", type=float, default=None, help="excluded start (10 %%)")
    parser.add_argument("--deployments", type=int, default=6)
    parser.add_argument("--load-rate", type=float, default=20.0, help="requests/s to dep 0")
    parser.add_argument("--out", type=Path, default=Path("results/bench_probes"))
    args = parser.parse_args(argv)
    warmup_s = args.warmup_s if args.warmup_s is not None else max(10.0, 0.1 * args.duration_s)
    cfg = {
        "duration_s": args.duration_s,
        "warmup_s": warmup_s,
        "deployments": args.deployments,
        "interval_s": 1.0,
        "detail_interval_s": 10.0,
        "load_rate_rps": args.load_rate,
        "load_output_tokens": 16,
    }
    out: Path = args.out
    for sub in ("monitor", "monitor_rescan_every_tick", "load"):
        # a previous run's files would pass the readiness check below before start-up ends
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    deps = [
        DeploymentProcess(
            DeploymentSpec(
                f"dep{i}", DeploymentKind.INJECTOR, {"kind": "control", "first_token_delay_s": 0.01}
            ),
            out / f"dep{i}.log",
        )
        for i in range(args.deployments)
    ]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for dep in deps:
            dep.start()
        for dep in deps:
            dep.wait_ready(120)
        pids = [str(d.current_pid()) for d in deps]
        urls = [f"{d.current_pid()}={d.metrics_url}" for d in deps]
        run_s = args.duration_s + 120.0  # ended by SIGINT once the window is measured
        for name, refresh in (("monitor", "5"), ("monitor_rescan_every_tick", "0")):
            cmd = [
                "aging",
                "monitor",
                *pids,
                "--out",
                str(out / name),
                "--duration-s",
                str(run_s),
                "--tree-refresh-s",
                refresh,
            ]
            for u in urls:
                cmd += ["--metrics-url", u]
            procs[name] = _cli(cmd, out / f"{name}.log")
        procs["loadgen"] = _cli(
            [
                "aging",
                "load",
                deps[0].url,
                "--rate",
                str(args.load_rate),
                "--duration",
                str(run_s),
                "--output-tokens",
                "16",
                "--out",
                str(out / "load"),
            ],
            out / "loadgen.log",
        )
        # The clock starts when all three have imported and are writing (CLI start-up is
        # not the steady state being measured).
        ready = [
            out / "monitor" / "host.csv",
            out / "monitor_rescan_every_tick" / "host.csv",
            out / "load" / "client.csv",
        ]
        deadline = time.monotonic() + 120
        while not all(f.exists() for f in ready):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs.values()):
                raise RuntimeError(f"probe processes did not start; see the logs in {out}")
            time.sleep(0.2)
        handles = {n: psutil.Process(p.pid) for n, p in procs.items()}
        samples: dict[str, list[tuple[float, float, int]]] = {n: [] for n in procs}
        t0 = time.monotonic()
        window_wall = [time.time() + warmup_s, 0.0]
        while time.monotonic() - t0 <= args.duration_s:
            now = time.monotonic() - t0
            for name, h in handles.items():
                with h.oneshot():
                    times, rss = h.cpu_times(), h.memory_info().rss
                samples[name].append((now, times.user + times.system, rss))
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0 - now)))
        window_wall[1] = time.time()
        for p in procs.values():
            p.send_signal(signal.SIGINT)
        for p in procs.values():
            p.wait(timeout=120)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        for dep in deps:
            dep.stop()

    result = {name: _stats(s, warmup_s) for name, s in samples.items()}
    load_lines = (out / "loadgen.log").read_text().strip().splitlines()
    load = json.loads(next(ln for ln in reversed(load_lines) if ln.startswith("{")))
    window_requests = 0
    with (out / "load" / "requests.jsonl").open() as fh:
        for line in fh:
            rec = json.loads(line)
            start = rec.get("wall_start_s")
            if rec["status"] == "ok" and start and window_wall[0] <= start <= window_wall[1]:
                window_requests += 1
    missed = sum(
        1
        for line in (out / "monitor" / "samples.jsonl").read_text().splitlines()
        if json.loads(line)["missed"]
    )
    print(
        f"\nprobe overhead, {args.deployments} deployments at 1 Hz, {args.duration_s:.0f} s "
        f"run, first {warmup_s:.0f} s excluded"
    )
    print(f"{'process':<28}{'cpu frac':>10}{'p50':>8}{'p99':>8}{'rss MiB':>10}{'MiB/h':>9}")
    for name, r in result.items():
        print(
            f"{name:<28}{r['cpu_fraction']:>10.4f}{r['cpu_fraction_p50']:>8.3f}"
            f"{r['cpu_fraction_p99']:>8.3f}{r['rss_end_mib']:>10.1f}"
            f"{r['rss_growth_mib_per_h']:>9.2f}"
        )
    ratio = result["monitor_rescan_every_tick"]["cpu_fraction"] / result["monitor"]["cpu_fraction"]
    cpu_ms = 1000 * result["loadgen"]["cpu_fraction"] * result["loadgen"]["window_s"]
    summary: dict[str, Any] = {
        "monitor_cpu_fraction": round(result["monitor"]["cpu_fraction"], 5),
        "monitor_cpu_fraction_p99": round(result["monitor"]["cpu_fraction_p99"], 4),
        "monitor_rss_growth_mib_per_h": round(result["monitor"]["rss_growth_mib_per_h"], 3),
        "monitor_rss_mib": round(result["monitor"]["rss_end_mib"], 1),
        "monitor_missed_samples": missed,
        "rescan_every_tick_cpu_fraction": round(
            result["monitor_rescan_every_tick"]["cpu_fraction"], 5
        ),
        "rescan_every_tick_cpu_ratio_vs_default": round(ratio, 2),
        "loadgen_cpu_fraction": round(result["loadgen"]["cpu_fraction"], 5),
        "loadgen_cpu_ms_per_request": round(cpu_ms / max(1, window_requests), 3),
        "loadgen_rss_growth_mib_per_h": round(result["loadgen"]["rss_growth_mib_per_h"], 3),
        "loadgen_requests_ok": load["requests_ok"],
        "loadgen_requests_error": load["requests_error"],
        "run_s": args.duration_s,
        "git_sha": git_sha(),
        "config_hash": config_hash(cfg),
    }
    print(
        f"monitor: {summary['monitor_cpu_fraction']:.4f} of a core (goal < 0.02), "
        f"{summary['monitor_rss_growth_mib_per_h']:+.2f} MiB/h; rescanning every tick costs "
        f"{ratio:.2f}x; load generator {summary['loadgen_cpu_ms_per_request']:.2f} CPU ms "
        "per request"
    )
    (out / "bench_probes.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
