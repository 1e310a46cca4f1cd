"""Hamed-Rao correction, Burg AR fit, sieve bootstrap and block aggregation."""

import numpy as np
import pytest
from scipy.signal import lfilter

from llmsys.aging import SeriesError, aggregate_time_bins, hamed_rao_var_s, sieve_bootstrap_var_s
from llmsys.aging.autocorr import (
    ArFit,
    ar_residuals,
    bias_correct_ar,
    burg_fixed_order_batch,
    fit_ar_burg,
    ols_residuals,
)


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


def test_batch_burg_matches_the_single_series_fit() -> None:
    # reference: fit_ar_burg row by row, at the order AIC chose for that row
    rng = np.random.default_rng(6)
    rows = np.stack([_ar1(rng, 300, 0.8) for _ in range(4)])
    for row, phi in zip(rows, burg_fixed_order_batch(rows, 3), strict=True):
        ref = fit_ar_burg(row, max_order=3)
        # AIC may stop below 3; compare where it kept all three lags
        if ref.order == 3:
            assert phi == pytest.approx(ref.phi, abs=1e-10)
    one = fit_ar_burg(rows[0], max_order=1)
    assert burg_fixed_order_batch(rows[:1], 1)[0] == pytest.approx(one.phi, abs=1e-10)


def test_bias_correction_moves_persistent_fits_towards_the_truth() -> None:
    # AR(1) phi = 0.95, m = 128, least-squares detrended: Burg is biased low (about -0.05)
    rng = np.random.default_rng(7)
    m, phi = 128, 0.95
    raw, corrected = [], []
    for _ in range(40):
        e = ols_residuals(_ar1(rng, m, phi)[None, :])[0]
        fit = fit_ar_burg(e, max_order=1)
        if fit.order == 0:
            continue
        resid = ar_residuals(e, fit)
        raw.append(fit.phi[0])
        corrected.append(bias_correct_ar(fit, resid - resid.mean(), m, 200, rng).phi[0])
    assert len(raw) >= 30
    assert np.mean(raw) < phi - 0.03
    assert abs(np.mean(corrected) - phi) < abs(np.mean(raw) - phi) / 2
    # never non-stationary, even from a fit at the unit-root edge
    edge = ArFit(phi=(0.999,), innovation_var=1.0)
    out = bias_correct_ar(edge, rng.standard_normal(100), 64, 100, rng)
    assert abs(out.phi[0]) < 1.0
    assert bias_correct_ar(ArFit(phi=(), innovation_var=1.0), resid, m, 100, rng).order == 0
