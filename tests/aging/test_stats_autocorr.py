"""Hamed-Rao correction, Burg AR fit, sieve bootstrap and block aggregation."""

import numpy as np
import pytest
from scipy.signal import lfilter

from llmsys.aging import SeriesError, aggregate_time_bins, hamed_rao_var_s, sieve_bootstrap_var_s
from llmsys.aging.autocorr import fit_ar_burg


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    return np.asarray(lfilter([1.0], [1.0, -phi], rng.standard_normal(n + 2000)))[2000:]


def test_burg_recovers_ar1_coefficient() -> None:
    rng = np.random.default_rng(0)
    fit = fit_ar_burg(_ar1(rng, 20_000, 0.7), max_order=8)
    assert fit.order >= 1
    assert fit.phi[0] == pytest.approx(0.7, abs=0.03)
    assert fit_ar_burg(rng.standard_normal(5000), max_order=8).order <= 2


def test_hamed_rao_inflates_for_positive_autocorrelation_and_is_floored() -> None:
    rng = np.random.default_rng(1)
    n = 3000
    var_iid = n * (n - 1) * (2 * n + 5) / 18.0
    var_ar, vif_ar = hamed_rao_var_s(_ar1(rng, n, 0.8), var_iid)
    assert vif_ar > 3.0
    assert var_ar == pytest.approx(var_iid * vif_ar)
    # alternating series: strongly negative lag-1 correlation would make the raw factor < 0
    alt = np.tile([0.0, 10.0], n // 2) + rng.standard_normal(n) * 0.01
    var_alt, vif_alt = hamed_rao_var_s(alt, var_iid, max_lag=1, vif_floor=0.05)
    assert vif_alt == pytest.approx(0.05)
    assert var_alt > 0.0


def test_sieve_variance_matches_independence_on_white_noise() -> None:
    rng = np.random.default_rng(2)
    m = 512
    var_iid = m * (m - 1) * (2 * m + 5) / 18.0
    var_s, _fit = sieve_bootstrap_var_s(rng.standard_normal(m), 800, 10, rng)
    assert var_s == pytest.approx(var_iid, rel=0.15)
    var_ar, _ = sieve_bootstrap_var_s(_ar1(rng, m, 0.9), 400, 10, rng)
    assert var_ar > 5 * var_iid
    with pytest.raises(SeriesError):
        sieve_bootstrap_var_s(np.zeros(3), 100, 4, rng)


def test_aggregate_drops_empty_bins_across_gaps() -> None:
    t = np.concatenate([np.arange(0.0, 100.0), np.arange(300.0, 400.0)])
    y = t * 2.0
    tb, yb = aggregate_time_bins(t, y, 40)
    assert tb.shape[0] < 40  # the gap's bins are empty and dropped
    assert np.all(np.diff(tb) > 0)
    assert yb == pytest.approx(tb * 2.0)
    same_t, same_y = aggregate_time_bins(t, y, 1000)
    assert same_t is t and same_y is y
