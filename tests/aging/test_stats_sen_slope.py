"""Exact Theil-Sen selection against a brute-force reference at n <= 3,000."""

import numpy as np
import pymannkendall as pmk
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmsys.aging import SeriesError, pairwise_slope_order_stats, sen_slope, sen_slope_ci
from llmsys.aging.reference import pairwise_slopes_reference, sen_slope_reference


def _irregular(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.cumsum(rng.exponential(1.0, n)) + 1000.0


@pytest.mark.parametrize("n", [2, 3, 50, 999, 3000])
def test_median_matches_brute_force_on_irregular_time(n: int) -> None:
    rng = np.random.default_rng(n)
    t = _irregular(rng, n)
    y = 0.3 * t + rng.standard_normal(n) * 5
    assert sen_slope(t, y).slope == pytest.approx(sen_slope_reference(t, y), rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_quantised_values_and_repeated_x(seed: int) -> None:
    # memory in whole pages and cumulative counters that repeat: huge ties in slopes and x
    rng = np.random.default_rng(seed)
    n = 1500
    x = np.sort(rng.integers(0, 400, n)).astype(float)
    y = rng.integers(0, 5, n) * 4096.0 + (x > 200) * 8192.0
    ref = pairwise_slopes_reference(x, y)
    ranks = rng.integers(0, ref.size, 7)
    # a small enumeration cap forces the counting / bisection path at this size
    got = pairwise_slope_order_stats(x, y, ranks, max_enumerated=500)
    assert got == pytest.approx(ref[ranks])
    assert sen_slope(x, y).slope == pytest.approx(float(np.median(ref)))


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 30), st.integers(-5, 5)), min_size=3, max_size=60),
    st.integers(1, 40),
)
def test_order_statistics_property(points: list[tuple[int, int]], cap: int) -> None:
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    ref = pairwise_slopes_reference(x, y)
    if ref.size == 0:
        with pytest.raises(SeriesError):
            sen_slope(x, y)
        return
    ranks = np.arange(ref.size)
    assert pairwise_slope_order_stats(x, y, ranks, max_enumerated=cap) == pytest.approx(ref)


def test_matches_pymannkendall_sens_slope_per_index() -> None:
    rng = np.random.default_rng(4)
    y = np.round(np.cumsum(rng.standard_normal(400)) * 3)
    ref = pmk.sens_slope(y)
    got = sen_slope(np.arange(400.0), y)
    assert got.slope == pytest.approx(ref.slope)


def test_interval_ranks_match_brute_force_and_widen_with_variance() -> None:
    rng = np.random.default_rng(9)
    n = 800
    t = _irregular(rng, n)
    y = 0.01 * t + rng.standard_normal(n)
    var_iid = n * (n - 1) * (2 * n + 5) / 18.0
    lo, hi = sen_slope_ci(t, y, var_iid)
    ref = pairwise_slopes_reference(t, y)
    c = 1.959963984540054 * np.sqrt(var_iid)
    n_pairs = ref.size
    assert lo == pytest.approx(ref[int(np.floor((n_pairs - c) / 2)) - 1])
    assert hi == pytest.approx(ref[int(np.ceil((n_pairs + c) / 2))])
    lo4, hi4 = sen_slope_ci(t, y, 4 * var_iid)
    assert lo4 < lo < sen_slope(t, y).slope < hi < hi4


def test_large_series_recovers_injected_leak_per_time_unit() -> None:
    rng = np.random.default_rng(1)
    n = 200_000
    t = np.arange(n, dtype=float) * 2.0  # 0.5 Hz
    t = np.delete(t, np.s_[50_000:60_000])  # a gap
    y = np.round((1e9 + 1000.0 * t + rng.standard_normal(t.size) * 1e5) / 4096) * 4096
    assert sen_slope(t, y).slope == pytest.approx(1000.0, rel=2e-3)
