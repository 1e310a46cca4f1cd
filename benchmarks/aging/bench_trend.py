"""Validation of the aging trend statistics (issue 11): size, power, estimation, speed.

Usage::

    python benchmarks/aging/bench_trend.py            # full validation (long)
    python benchmarks/aging/bench_trend.py --quick    # CI-sized subset

Size: false-positive rate of the default method at alpha 0.05 on AR(1) noise.
Power: smallest linear leak (noise sd per hour of run) detected with 80 % power.
Estimation: Theil-Sen bias and slope-interval coverage on injected leaks.
Speed/memory: one 777,600-point series through the full default pipeline; the
6 x 15 x 777,600 campaign in its own subprocess (peak RSS is its own); pymannkendall's
original_test + sens_slope vs ours at n = 20,000, each in its own subprocess.
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from llmsys.aging.analyze import MetricSeries, analyze_metric
from llmsys.aging.mann_kendall import mann_kendall_s
from llmsys.aging.sen_slope import sen_slope
from llmsys.aging.trend import TrendConfig, trend_test
from llmsys.core.provenance import config_hash, git_sha

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_noise import real_noise_power  # sibling module of this script

ALPHA = 0.05
SERIES_N = 777_600


def ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    """Stationary AR(1) with unit innovation variance, ``[n]``."""
    burn = int(min(20_000, 10 / max(1 - phi, 1e-3)))
    e = rng.standard_normal(n + burn)
    e[0] /= math.sqrt(max(1 - phi * phi, 1e-6))
    return np.asarray(lfilter([1.0], [1.0, -phi], e))[burn:]


def _size_cell(task: tuple[int, float, int, int, int, bool]) -> int:
    """Rejections of the default test in ``reps`` AR(1) replicates (one worker task)."""
    n, phi, reps, seed, bias_reps, correct = task
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    cfg = TrendConfig(bias_replicates=bias_reps, correct_test_variance=correct)
    return sum(
        trend_test(t, ar1(rng, n, phi), cfg).log10_p <= math.log10(ALPHA) for _ in range(reps)
    )


def size_table(
    ns: list[int],
    phis: list[float],
    reps: int,
    seed: int,
    workers: int,
    bias_reps: int,
    correct: bool,
) -> dict[str, float]:
    chunks = max(1, reps // 100)
    tasks = []
    for n in ns:
        for phi in phis:
            for c in range(chunks):
                part = reps // chunks + (1 if c < reps % chunks else 0)
                tasks.append((n, phi, part, seed * 1_000_003 + len(tasks), bias_reps, correct))
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            hits = pool.map(_size_cell, tasks, chunksize=1)
    else:
        hits = [_size_cell(task) for task in tasks]
    out: dict[str, float] = {}
    for (n, phi, _, _, _, _), h in zip(tasks, hits, strict=True):
        out[f"n{n}_phi{phi}"] = out.get(f"n{n}_phi{phi}", 0.0) + h / reps
    print(f"\nsize: false-positive rate at alpha {ALPHA}, default method, {reps} replicates/cell")
    print(f"{'n':>8} " + " ".join(f"phi={p:<5}" for p in phis))
    for n in ns:
        print(f"{n:>8} " + " ".join(f"{out[f'n{n}_phi{phi}']:9.4f}" for phi in phis))
    return out


def _estimation_cell(task: tuple[int, float, int, int, int]) -> tuple[float, int, int]:
    """(sum of slope estimates / beta, intervals covering beta, replicates) for one task.

    The interval is the one :func:`analyze_metric` reports (``trend_test``'s; with
    ``trim_warmup=False`` the pipeline passes the series through unchanged), the estimate
    the exact Theil-Sen slope on every sample; calling the two directly skips the
    change-point and growth steps, which do not touch either number.
    """
    n, phi, reps, seed, bias_reps = task
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    beta = 3.0 / math.sqrt(1 - phi * phi) / n
    cfg = TrendConfig(bias_replicates=bias_reps)
    est, cover = 0.0, 0
    for _ in range(reps):
        y = beta * t + ar1(rng, n, phi)
        lo, hi = trend_test(t, y, cfg).slope_ci_per_s
        est += sen_slope(t, y).slope / beta
        cover += lo <= beta <= hi
    return est, cover, reps


def estimation(
    ns: list[int], phis: list[float], reps: int, seed: int, workers: int, bias_reps: int
) -> dict[str, dict[str, float]]:
    """Relative bias and 95 % coverage per (n, phi); Monte-Carlo standard errors included."""
    chunk = 50
    tasks = []
    for n in ns:
        for phi in phis:
            for c in range(0, reps, chunk):
                tasks.append(
                    (n, phi, min(chunk, reps - c), seed * 7_919 + 1 + len(tasks), bias_reps)
                )
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_estimation_cell, tasks, chunksize=1)
    else:
        parts = [_estimation_cell(task) for task in tasks]
    sums: dict[str, list[float]] = {}
    for (n, phi, _, _, _), (e, c, r) in zip(tasks, parts, strict=True):
        acc = sums.setdefault(f"n{n}_phi{phi}", [0.0, 0.0, 0.0])
        acc[0], acc[1], acc[2] = acc[0] + e, acc[1] + c, acc[2] + r
    out = {}
    print(
        f"\nestimation: injected slope 3 marginal sd/run, {reps} replicates/cell, "
        f"AR bias-correction replicates {bias_reps}"
    )
    for key, (e, c, r) in sums.items():
        cov = c / r
        se = math.sqrt(cov * (1 - cov) / r)
        out[key] = {"rel_bias": e / r - 1.0, "coverage": cov, "coverage_se": se, "reps": r}
        print(f"  {key:<16} rel_bias={e / r - 1.0:+.4f} coverage={cov:.4f} (MC se {se:.4f})")
    return out


def power(ns: list[int], phi: float, reps: int, seed: int) -> dict[str, float]:
    """Smallest leak (total rise over the run, in noise sd) with >= 80 % detection."""
    rng = np.random.default_rng(seed + 2)
    grid = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    out = {}
    print(f"\npower: AR(1) phi={phi}, rise over the run in marginal sd, {reps} replicates")
    for n in ns:
        t = np.arange(n, dtype=np.float64)
        sd = 1.0 / math.sqrt(1 - phi * phi)
        found = math.inf
        for rise in grid:
            hits = sum(
                trend_test(t, rise * sd * t / n + ar1(rng, n, phi)).log10_p <= math.log10(ALPHA)
                for _ in range(reps)
            )
            if hits / reps >= 0.8:
                found = rise
                break
        out[f"n{n}"] = found
        print(f"  n={n:>7}: min detectable rise {found} sd", flush=True)
    return out


_CAMPAIGN = r"""
import json, resource, sys, time
import numpy as np
from scipy.signal import lfilter
from llmsys.aging.analyze import MetricSeries, analyze_family
deps, metrics, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(7)
t = np.arange(n, dtype=np.float64)
t0 = time.perf_counter()
for d in range(deps):
    fam = {}
    for m in range(metrics):
        noise = lfilter([1.0], [1.0, -0.99], rng.standard_normal(n)) * 2e5
        rate = (m % 3) * 5e6 / 3600.0
        fam[f"d{d}/m{m}"] = MetricSeries(t, np.round((2e9 + rate * t + noise) / 4096) * 4096)
    analyze_family(fam)
    del fam
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall_s": wall, "peak_rss_mib": peak}))
"""

_PMK = r"""
import json, resource, sys, time
import numpy as np
n, which = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(3)
y = np.round(np.cumsum(rng.standard_normal(n)) * 10 + 0.01 * np.arange(n))
if which == "pmk":
    import pymannkendall as mk
    t0 = time.perf_counter()
    mk.original_test(y)
    mk.sens_slope(y)
    wall = time.perf_counter() - t0
else:
    from llmsys.aging.mann_kendall import mann_kendall
    from llmsys.aging.sen_slope import sen_slope
    mann_kendall(y[:50]); sen_slope(np.arange(50.0), y[:50])
    t0 = time.perf_counter()
    mann_kendall(y)
    sen_slope(np.arange(n, dtype=float), y)
    wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall_s": wall, "peak_rss_mib": peak}))
"""


def _sub(code: str, *args: str) -> dict[str, float]:
    res = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def matches_pymannkendall() -> bool:
    import pymannkendall as mk

    rng = np.random.default_rng(11)
    ok = True
    for n in (12, 40, 200):
        y = rng.integers(0, 5, n).astype(np.float64)
        ref = mk.original_test(y)
        s, var_s = mann_kendall_s(y)
        z = (s - np.sign(s)) / math.sqrt(var_s) if s != 0 else 0.0
        ok &= math.isclose(s, ref.s) and math.isclose(var_s, ref.var_s) and math.isclose(z, ref.z)
    return bool(ok)


def speed(reps: int) -> dict[str, float]:
    rng = np.random.default_rng(5)
    t = np.arange(SERIES_N, dtype=np.float64)
    noise = np.asarray(lfilter([1.0], [1.0, -0.99], rng.standard_normal(SERIES_N))) * 2e5
    y = np.round((2e9 + 5e6 / 3600 * t + noise) / 4096) * 4096
    req = np.cumsum(rng.poisson(2.0, SERIES_N)).astype(np.float64)
    analyze_metric(MetricSeries(t[:5000], y[:5000]))  # warm-up: compile kernels
    plain, counters = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        analyze_metric(MetricSeries(t, y))
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        analyze_metric(MetricSeries(t, y, req, req * 150.0))
        counters.append(time.perf_counter() - t0)
    print(
        f"\none 777,600-point series, default pipeline: median {statistics.median(plain):.2f} s "
        f"(max {max(plain):.2f}); with requests+tokens slopes {statistics.median(counters):.2f} s"
    )
    return {"plain": statistics.median(plain), "counters": statistics.median(counters)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized subset")
    ap.add_argument("--replicates", type=int, default=None, help="size replicates per cell")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--skip-campaign", action="store_true", help="skip the 6x15 campaign")
    ap.add_argument(
        "--workers", type=int, default=1, help="processes for the size and estimation tables"
    )
    ap.add_argument(
        "--parts",
        default="size,estimation,power,realnoise,speed",
        help="comma-separated subset of size,estimation,power,realnoise,speed to run",
    )
    ap.add_argument(
        "--bias-replicates",
        type=int,
        default=TrendConfig().bias_replicates,
        help="TrendConfig.bias_replicates (interval variance; 0: uncorrected sieve)",
    )
    ap.add_argument(
        "--correct-test-variance",
        action="store_true",
        help="TrendConfig.correct_test_variance: test with the bias-corrected variance too",
    )
    ap.add_argument(
        "--est-ns", default="10000", help="comma-separated series lengths for estimation"
    )
    ap.add_argument(
        "--est-phis", default="0,0.9,0.99", help="comma-separated AR(1) phis for estimation"
    )
    ap.add_argument(
        "--realnoise-replicates", type=int, default=None, help="surrogates per leak level"
    )
    ap.add_argument("--est-replicates", type=int, default=None, help="estimation replicates")
    ap.add_argument("--power-replicates", type=int, default=None, help="power replicates")
    args = ap.parse_args(argv)
    quick = args.quick
    phis = [0.0, 0.5, 0.9, 0.99]
    ns = [1000, 10_000] if quick else [1000, 10_000, 100_000]
    reps = args.replicates or (200 if quick else 2000)
    cfg = {
        "quick": quick,
        "phis": phis,
        "ns": ns,
        "size_reps": reps,
        "seed": args.seed,
        "workers": args.workers,
        "trend": repr(
            TrendConfig(
                bias_replicates=args.bias_replicates,
                correct_test_variance=args.correct_test_variance,
            )
        ),
    }
    parts = set(args.parts.split(","))
    cfg["parts"] = sorted(parts)
    est_reps = args.est_replicates or (100 if quick else 400)
    pw_reps = args.power_replicates or (40 if quick else 200)
    rn_reps = args.realnoise_replicates or (40 if quick else 400)
    est_ns = [int(v) for v in args.est_ns.split(",")]
    est_phis = [float(v) for v in args.est_phis.split(",")]
    cfg["est_reps"], cfg["power_reps"], cfg["realnoise_reps"] = est_reps, pw_reps, rn_reps
    cfg["est_ns"], cfg["est_phis"] = est_ns, est_phis
    bias = args.bias_replicates
    fpr = (
        size_table(ns, phis, reps, args.seed, args.workers, bias, args.correct_test_variance)
        if "size" in parts
        else {}
    )
    est = (
        estimation(est_ns, est_phis, est_reps, args.seed, args.workers, bias)
        if "estimation" in parts
        else {}
    )
    pw_ns = [1000, 10_000] if quick else [1000, 10_000, 100_000]
    pw = power(pw_ns, 0.99, pw_reps, args.seed) if "power" in parts else {}
    rn = real_noise_power(rn_reps, args.seed, args.workers) if "realnoise" in parts else {}
    sp: dict[str, float] = {}
    campaign: dict[str, float] = {}
    pmk: dict[str, float] = {}
    ours: dict[str, float] = {}
    if "speed" in parts:
        sp = speed(1 if quick else 3)
        if not args.skip_campaign:
            campaign = _sub(_CAMPAIGN, "6", "15", str(SERIES_N))
            print(
                f"campaign 6 x 15 x {SERIES_N}: {campaign['wall_s']:.1f} s, peak RSS "
                f"{campaign['peak_rss_mib']:.0f} MiB"
            )
        pmk = _sub(_PMK, "20000", "pmk")
        ours = _sub(_PMK, "20000", "ours")
        print(
            f"n=20,000 original_test+sens_slope: pymannkendall {pmk['wall_s']:.2f} s "
            f"({pmk['peak_rss_mib']:.0f} MiB) vs ours {ours['wall_s']:.3f} s "
            f"({ours['peak_rss_mib']:.0f} MiB): {pmk['wall_s'] / ours['wall_s']:.0f}x"
        )
    big = [v for k, v in fpr.items() if int(k.split("_")[0][1:]) >= 10_000]
    cov = [v["coverage"] for v in est.values()]
    result = {
        "quick": quick,
        "size_replicates_per_cell": reps,
        "fpr_by_cell": fpr,
        "fpr_max_phi_le_0_99_n_ge_1e4": max(big) if big else None,
        "coverage_min": min(cov) if cov else None,
        "coverage_max": max(cov) if cov else None,
        "estimation_by_cell": est,
        "slope_rel_bias_max_abs": max((abs(v["rel_bias"]) for v in est.values()), default=None),
        "coverage_mc_se_max": max((v["coverage_se"] for v in est.values()), default=None),
        "min_detectable_rise_sd_phi_0_99": pw,
        "real_noise": rn,
        "real_noise_false_alarm_max": max(
            (
                v[f"{k}_false_alarm_rate"]
                for n, v in rn.items()
                if n != "recording"
                for k in ("shift", "block")
            ),
            default=None,
        ),
        "series_777600_s": sp.get("plain"),
        "series_777600_with_counters_s": sp.get("counters"),
        "campaign_6x15x777600_s": campaign.get("wall_s"),
        "campaign_peak_rss_mib": campaign.get("peak_rss_mib"),
        "pymannkendall_n20000_s": pmk.get("wall_s"),
        "ours_n20000_s": ours.get("wall_s"),
        "speedup_vs_pymannkendall_n20000": pmk["wall_s"] / ours["wall_s"] if pmk else None,
        "matches_pymannkendall": matches_pymannkendall(),
        "git_sha": git_sha(),
        "config_hash": config_hash(cfg),
    }
    Path("results").mkdir(exist_ok=True)
    tag = "quick" if quick else "full"
    Path(f"results/bench_trend_{tag}_{'_'.join(sorted(parts))}.json").write_text(
        json.dumps(result, indent=2)
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
