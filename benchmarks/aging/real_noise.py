"""Power and false-alarm rate of the default trend test on noise recorded from real servers.

Used by ``bench_trend.py --parts realnoise``. The recording lives in
``benchmarks/aging/data/real_noise_rss.npz``: per recorded server (``idle``, ``loaded``) the
1 Hz sample times ``<name>_t_s: [n]`` (seconds) and RSS ``<name>_rss_bytes: [n]`` of the
server process tree, as ``llmsys aging monitor`` wrote them, and a ``meta`` JSON string
(date, servers, load, machine, command).

Procedure, per recorded series:

1. residuals ``r: [n]`` = RSS minus its Theil-Sen line (whatever trend the real run had is
   removed, so "no leak" is true of every surrogate; the removed slope is reported);
2. surrogate noise keeping the real autocorrelation and marginal: a circular shift of
   ``r`` by a uniform random offset (every within-series dependence kept, one seam), or a
   circular moving-block bootstrap with blocks of ``n // 10`` samples;
3. false-alarm rate: share of surrogates the default test calls increasing at alpha 0.05;
4. power: a linear leak rising ``rise`` bytes over the run is added, and the sum is rounded
   to whole 4 KiB pages as RSS is; the smallest rise on the grid detected in >= 80 % of
   surrogates is the minimum detectable leak, also given in MiB/h;
5. synthetic comparator: the same n and grid on AR(1) noise with the residuals' lag-1
   autocorrelation and standard deviation (page-rounded the same way).
"""

from __future__ import annotations

import json
import math
import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import lfilter

from llmsys.aging.sen_slope import sen_slope
from llmsys.aging.trend import trend_test

DATA = Path(__file__).resolve().parent / "data" / "real_noise_rss.npz"
PAGE_BYTES = 4096.0
ALPHA = 0.05


def load_recordings(
    path: Path = DATA,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """``({name: (t_s [n], rss_bytes [n])}, meta)`` from the recording file."""
    with np.load(path) as data:
        names = sorted({k.rsplit("_t_s", 1)[0] for k in data.files if k.endswith("_t_s")})
        series = {
            n: (data[f"{n}_t_s"].astype(np.float64), data[f"{n}_rss_bytes"].astype(np.float64))
            for n in names
        }
        meta = json.loads(str(data["meta"]))
    return series, meta


def residuals(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """``(y minus its Theil-Sen line [n], the removed slope in bytes/s)``."""
    if float(np.ptp(y)) == 0.0:
        return y - y.mean(), 0.0
    fit = sen_slope(t, y)
    return y - (fit.intercept + fit.slope * t), fit.slope


def surrogate(r: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One noise surrogate ``[n]`` of the residuals ``r: [n]`` (``shift`` or ``block``)."""
    n = r.shape[0]
    if kind == "shift":
        return np.roll(r, int(rng.integers(n)))
    block = max(n // 10, 2)
    starts = rng.integers(n, size=math.ceil(n / block))
    idx = (starts[:, None] + np.arange(block)[None, :]).ravel()[:n] % n
    return r[idx]


def _rejects(t: np.ndarray, y: np.ndarray) -> bool:
    return trend_test(t, y).log10_p <= math.log10(ALPHA)


def _detect_rate(
    t: np.ndarray, noise: list[np.ndarray], rise_bytes: float, level_bytes: float
) -> float:
    span = float(t[-1] - t[0])
    leak = rise_bytes * (t - t[0]) / span
    hits = sum(
        _rejects(t, np.round((level_bytes + e + leak) / PAGE_BYTES) * PAGE_BYTES) for e in noise
    )
    return hits / len(noise)


def min_detectable(
    t: np.ndarray, noise: list[np.ndarray], grid_bytes: list[float], level_bytes: float
) -> tuple[float | None, dict[str, float]]:
    """Smallest rise on ``grid_bytes`` detected in >= 80 % of ``noise``, and every rate tried."""
    rates: dict[str, float] = {}
    for rise in grid_bytes:
        rate = _detect_rate(t, noise, rise, level_bytes)
        rates[f"{rise:.0f}"] = rate
        if rate >= 0.8:
            return rise, rates
    return None, rates


def ar1_like(r: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """AR(1) ``[n]`` with the lag-1 autocorrelation and standard deviation of ``r``."""
    n = r.shape[0]
    sd = float(r.std())
    c = r - r.mean()
    phi = float(np.dot(c[1:], c[:-1]) / np.dot(c, c)) if sd > 0 else 0.0
    phi = min(max(phi, 0.0), 0.999)
    e = rng.standard_normal(n + 2000) * sd * math.sqrt(1 - phi * phi)
    return np.asarray(lfilter([1.0], [1.0, -phi], e))[2000:]


def _noise_task(task: tuple[str, str, int, int]) -> dict[str, Any]:
    """False-alarm rate and minimum detectable rise for one (recording, noise kind)."""
    name, kind, reps, seed = task
    t, y = load_recordings()[0][name]
    r, _ = residuals(t, y)
    rng = np.random.default_rng(seed)
    sd = float(r.std())
    # rises: whole pages for a noiseless series, else multiples of the residual sd
    unit = sd if sd > 0 else PAGE_BYTES
    grid = [unit * k for k in (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)]
    level = float(np.median(y))
    if kind == "ar1":
        noise = [ar1_like(r, rng) for _ in range(reps)]
    else:
        noise = [surrogate(r, kind, rng) for _ in range(reps)]
    far = sum(_rejects(t, np.round((level + e) / PAGE_BYTES) * PAGE_BYTES) for e in noise)
    mdl, rates = min_detectable(t, noise, grid, level)
    span_h = float(t[-1] - t[0]) / 3600.0
    return {
        f"{kind}_false_alarm_rate": far / reps,
        f"{kind}_min_detectable_rise_bytes": mdl,
        f"{kind}_min_detectable_mib_per_h": None if mdl is None else mdl / span_h / 2**20,
        f"{kind}_detection_rate_by_rise_bytes": rates,
    }


KINDS = ("shift", "block", "ar1")


def real_noise_power(reps: int, seed: int, workers: int = 1) -> dict[str, Any]:
    """Run steps 1-5 on every recording with ``reps`` surrogates; print a table, return figures."""
    series, meta = load_recordings()
    out: dict[str, Any] = {"recording": meta}
    tasks = [
        (name, kind, reps, seed * 31 + i)
        for i, (name, kind) in enumerate((name, kind) for name in series for kind in KINDS)
    ]
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
            results = pool.map(_noise_task, tasks, chunksize=1)
    else:
        results = [_noise_task(task) for task in tasks]
    print(f"\nreal-server noise ({DATA.name}, {meta.get('date_utc')}), {reps} surrogates per level")
    for name, (t, y) in series.items():
        r, removed = residuals(t, y)
        sd = float(r.std())
        c = r - r.mean()
        row: dict[str, Any] = {
            "n": int(t.shape[0]),
            "span_h": float(t[-1] - t[0]) / 3600.0,
            "resid_sd_bytes": sd,
            "resid_lag1_autocorr": float(np.dot(c[1:], c[:-1]) / np.dot(c, c)) if sd > 0 else 0.0,
            "removed_slope_mib_per_h": removed * 3600 / 2**20,
            "raw_log10_p": trend_test(t, y).log10_p,
        }
        for (task_name, _, _, _), res in zip(tasks, results, strict=True):
            if task_name == name:
                row.update(res)
        out[name] = row
        print(
            f"  {name:<7} n={row['n']} resid sd={sd / 2**20:.3f} MiB "
            f"lag1={row['resid_lag1_autocorr']:.3f}; the run's own Sen slope "
            f"{row['removed_slope_mib_per_h']:+.2f} MiB/h (raw log10 p {row['raw_log10_p']:.1f})"
        )
        for kind in KINDS:
            mdl_b = row[f"{kind}_min_detectable_rise_bytes"]
            shown = (
                "none on the grid"
                if mdl_b is None
                else f"{mdl_b / 2**20:.3f} MiB over the run = "
                f"{row[f'{kind}_min_detectable_mib_per_h']:.3f} MiB/h"
            )
            print(
                f"    {kind:<5} false alarms {row[f'{kind}_false_alarm_rate']:.4f}; "
                f"80 % power at {shown}"
            )
    return out
