"""Growth classification, time to exhaustion, change points and work-normalised slopes."""

import numpy as np
import pytest
from scipy.signal import lfilter

from llmsys.aging import (
    AnalysisConfig,
    Detrend,
    Growth,
    MetricSeries,
    TrendConfig,
    analyze_metric,
    classify_growth,
    detect_changepoints,
    time_to_exhaustion,
    work_slopes,
)
from llmsys.aging.growth import shape_residuals


def _t(m: int = 256) -> np.ndarray:
    return np.linspace(0.0, 36_000.0, m)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        (lambda t: 100.0 * t, Growth.LINEAR),
        (lambda t: 3e6 * (1 - np.exp(-t / 4000.0)), Growth.SATURATING),
        (lambda t: np.where(t > 18_000.0, 2e6, 0.0), Growth.STEP),
    ],
)
def test_classifies_shapes(shape, expected: Growth) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    t = _t()
    y = 1e9 + shape(t) + rng.standard_normal(t.size) * 2e4
    assert classify_growth(t, y, significant=True) is expected
    assert classify_growth(t, y, significant=False) is Growth.NONE


def test_time_to_exhaustion_and_its_interval() -> None:
    # 1 GB free at 100 MB/h -> 10 h; interval from the slope interval [50, 200] MB/h
    tte = time_to_exhaustion(3e9, 4e9, 1e8 / 3600, (5e7 / 3600, 2e8 / 3600))
    assert tte is not None
    assert tte.tte_s / 3600 == pytest.approx(10.0)
    assert tte.tte_low_s / 3600 == pytest.approx(5.0)
    assert tte.tte_high_s is not None and tte.tte_high_s / 3600 == pytest.approx(20.0)
    unbounded = time_to_exhaustion(3e9, 4e9, 1e8 / 3600, (-1.0, 2e8 / 3600))
    assert unbounded is not None and unbounded.tte_high_s is None
    assert time_to_exhaustion(3e9, 4e9, 0.0, (-1.0, 1.0)) is None


def test_changepoints_find_warmup_and_onset() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(0.0, 40_000.0, 2.0)
    warm = np.where(t < 4000, 5e7 * (t / 4000), 5e7)  # fast start-up fill, then flat
    leak = np.where(t > 24_000, (t - 24_000) * 3000.0, 0.0)  # leak starts at 24,000 s
    y = 1e9 + warm + leak + rng.standard_normal(t.size) * 1e5
    cps = detect_changepoints(t, y)
    assert cps.warmup_end_t_s is not None and 2000 <= cps.warmup_end_t_s <= 7000
    assert cps.onset_t_s is not None and 21_000 <= cps.onset_t_s <= 27_000
    flat = detect_changepoints(t, 1e9 + rng.standard_normal(t.size) * 1e5)
    assert flat.warmup_end_t_s is None and flat.onset_t_s is None


def test_work_slopes_follow_requests_not_time() -> None:
    rng = np.random.default_rng(2)
    n = 5000
    # bursty load: requests per second vary 10x, 90 bytes leaked per request
    requests = np.cumsum(rng.choice([1, 10], n)).astype(float)
    tokens = requests * 250.0
    y = 1e9 + 90.0 * requests + rng.standard_normal(n) * 50
    ws = work_slopes(y, requests, tokens)
    assert ws.per_1k_requests == pytest.approx(90_000.0, rel=0.01)
    assert ws.per_million_tokens == pytest.approx(90.0 / 250.0 * 1e6, rel=0.01)
    assert work_slopes(y).per_1k_requests is None
    assert work_slopes(y, np.full(n, 7.0)).per_1k_requests is None


def _cache_run(knee_fraction: float, rng: np.random.Generator, noise_sd: float) -> np.ndarray:
    """400 s at 1 Hz of a 96 MiB cache filling linearly until the knee, RSS page-rounded."""
    t = np.arange(400.0)
    fill = 96 * 2**20 * np.minimum(t / (knee_fraction * 400.0), 1.0)
    noise = np.asarray(lfilter([1.0], [1.0, -0.9], rng.standard_normal(t.size + 500)))[500:]
    return np.round((5e8 + fill + noise * noise_sd) / 4096) * 4096


@pytest.mark.parametrize("knee_fraction", [0.3, 0.5])
@pytest.mark.parametrize("gap", [False, True])
def test_cache_that_stops_early_is_significant_and_saturating(
    knee_fraction: float, gap: bool
) -> None:
    # the case issue 13's runs found "not significant": the cache is full after 30 % of the
    # run; with a line as the only trend shape, the bend read as persistent noise
    rng = np.random.default_rng(11)
    t = np.arange(400.0)
    y = _cache_run(knee_fraction, rng, noise_sd=2**19)  # AR(0.9) noise, sd ~1.2 MiB
    if gap:  # 100 s without samples after the knee
        keep = (t < 150) | (t >= 250)
        t, y = t[keep], y[keep]
    shape = AnalysisConfig(trend=TrendConfig(detrend=Detrend.SHAPE), capacity=8e9)
    a = analyze_metric(MetricSeries(t, y), shape)
    assert a.significant and a.log10_p < -3
    assert a.growth is Growth.SATURATING
    assert a.tte_h is None


@pytest.mark.xfail(
    strict=True,
    reason="known limitation of the default (Detrend.LINE): the bend of a cache that fills "
    "early reads as persistent noise; Detrend.SHAPE finds it but over-rejects on AR(1) "
    "noise with phi = 0.99, so it is not the default (docs/benchmarks.md)",
)
def test_default_detrending_finds_a_cache_that_stops_early() -> None:
    y = _cache_run(0.3, np.random.default_rng(11), noise_sd=2**19)
    a = analyze_metric(MetricSeries(np.arange(400.0), y))
    assert a.significant and a.growth is Growth.SATURATING


@pytest.mark.xfail(
    strict=True,
    reason="known limitation: with no noise at all the flat part's residuals are exactly "
    "constant, which the AR sieve reads as a unit root (docs/benchmarks.md)",
)
def test_noise_free_cache_that_stops_early_is_significant() -> None:
    y = _cache_run(0.3, np.random.default_rng(12), noise_sd=0.0)
    a = analyze_metric(MetricSeries(np.arange(400.0), y))
    assert a.significant


def test_shape_residuals_remove_each_shape_exactly() -> None:
    t = np.linspace(0.0, 1000.0, 300)
    shapes = [
        3.0 + 0.5 * t,  # line
        7.0 + 2.0 * np.minimum(t, t[93]),  # cache: line up to a knee (a sample), then flat
        np.where(t > 600.0, 40.0, 1.0),  # step
    ]
    res = shape_residuals(t, np.stack(shapes))
    assert np.abs(res).max() < 1e-8 * 600.0
    # and on noise, never worse than the straight line alone
    rng = np.random.default_rng(13)
    walk = np.cumsum(rng.standard_normal((5, 300)), axis=1)
    slope, level = np.polyfit(t, walk.T, 1)
    line = walk - (slope[:, None] * t + level[:, None])
    assert np.all(np.sum(shape_residuals(t, walk) ** 2, axis=1) <= np.sum(line**2, axis=1) + 1e-9)
