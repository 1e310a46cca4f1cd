"""trend_test: methods, configuration errors, and a CI-sized size / power check."""

import math

import numpy as np
import pytest
from scipy.signal import lfilter

from llmsys.aging import (
    Alternative,
    SeriesError,
    StatsConfigError,
    TrendConfig,
    TrendMethod,
    trend_test,
)


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    return np.asarray(lfilter([1.0], [1.0, -phi], rng.standard_normal(n + 3000)))[3000:]


def test_default_method_holds_size_where_plain_mann_kendall_fails() -> None:
    # CI-sized version of the validation (benchmarks/aging/bench_trend.py): AR(1) phi=0.95
    rng = np.random.default_rng(3)
    n, reps = 4000, 60
    t = np.arange(n, dtype=float)
    plain = boot = 0
    for _ in range(reps):
        y = _ar1(rng, n, 0.95)
        plain += trend_test(t, y, TrendConfig(method=TrendMethod.ORIGINAL)).p_value < 0.05
        boot += trend_test(t, y, TrendConfig(bootstrap_replicates=200)).p_value < 0.05
    assert plain / reps > 0.25  # one-sided (increasing) test: half the two-sided rate
    assert boot / reps <= 0.15


def test_detects_leak_with_finite_log_p_and_interval_covering_truth() -> None:
    rng = np.random.default_rng(4)
    n = 50_000
    t = np.arange(n, dtype=float)
    y = 2.0 * t / 3600 + _ar1(rng, n, 0.9) * 0.05
    width = {}
    for method in TrendMethod:
        res = trend_test(t, y, TrendConfig(method=method))
        assert math.isfinite(res.log10_p) and res.log10_p < -20
        assert res.var_s > 0
        lo, hi = res.slope_ci_per_s
        width[method] = hi - lo
    # the textbook interval ignores phi = 0.9; both corrections widen it
    assert width[TrendMethod.ORIGINAL] < 0.5 * width[TrendMethod.SIEVE_BOOTSTRAP]
    assert width[TrendMethod.ORIGINAL] < width[TrendMethod.HAMED_RAO]
    # a 95 % interval misses 1 draw in 20: check the default's coverage over 30 draws
    covered = 0
    for _ in range(30):
        y = 2.0 * t / 3600 + _ar1(rng, n, 0.9) * 0.05
        lo, hi = trend_test(t, y).slope_ci_per_s
        covered += lo <= 2.0 / 3600 <= hi
    assert covered >= 24
    dec = trend_test(t, y, TrendConfig(alternative=Alternative.DECREASING))
    assert dec.log10_p == pytest.approx(0.0, abs=1e-9)


def test_hamed_rao_variance_is_positive_on_adversarial_series() -> None:
    n = 500
    t = np.arange(n, dtype=float)
    y = np.tile([0.0, 1.0], n // 2)
    res = trend_test(t, y, TrendConfig(method=TrendMethod.HAMED_RAO))
    assert res.var_s > 0 and math.isfinite(res.log10_p)


def test_same_seed_same_result() -> None:
    rng = np.random.default_rng(5)
    t = np.arange(3000.0)
    y = _ar1(rng, 3000, 0.5)
    assert trend_test(t, y) == trend_test(t, y)


@pytest.mark.parametrize(
    "kwargs",
    [{"confidence": 1.0}, {"aggregate_bins": 4}, {"bootstrap_replicates": 5}, {"vif_floor": 0.0}],
)
def test_config_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(StatsConfigError):
        TrendConfig(**kwargs)  # type: ignore[arg-type]


def test_rejects_short_or_unordered_series() -> None:
    with pytest.raises(SeriesError, match="at least 10"):
        trend_test(np.arange(5.0), np.arange(5.0))
    t = np.arange(20.0)
    t[7] = t[6]
    with pytest.raises(SeriesError, match="increasing"):
        trend_test(t, np.arange(20.0))


def test_interval_uses_the_bias_corrected_variance_and_the_test_keeps_its_own() -> None:
    # AR(1) phi = 0.98 on 600 points: Burg's estimate is biased low, the correction raises
    # the interval's Var S (by 1.3-2.5x on these seeds); the test's variance is unchanged
    rng = np.random.default_rng(8)
    t = np.arange(600.0)
    ratios = []
    for _ in range(6):
        y = 0.001 * t + _ar1(rng, 600, 0.98)
        plain = trend_test(t, y, TrendConfig(bias_replicates=0))
        default = trend_test(t, y)
        assert default.var_s == pytest.approx(plain.var_s)
        assert default.log10_p == pytest.approx(plain.log10_p)
        assert plain.interval_var_s == pytest.approx(plain.var_s)
        ratios.append(default.interval_var_s / default.var_s)
        lo_p, hi_p = plain.slope_ci_per_s
        lo_d, hi_d = default.slope_ci_per_s
        assert hi_d - lo_d > hi_p - lo_p  # corrected variance and the t value widen it
    assert min(ratios) > 1.1
    y = 0.03 * t + _ar1(rng, 600, 0.98)  # a clear trend: the corrected test is more cautious
    plain = trend_test(t, y, TrendConfig(bias_replicates=0))
    both = trend_test(t, y, TrendConfig(correct_test_variance=True))
    assert both.var_s == pytest.approx(both.interval_var_s)
    assert plain.log10_p < both.log10_p < 0.0
    with pytest.raises(StatsConfigError):
        TrendConfig(bias_replicates=5)
