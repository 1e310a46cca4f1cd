"""Trend significance under autocorrelation: one call, three methods, one result record.

Protocol: :func:`trend_test` takes timestamps ``t_s: [n]`` (seconds, strictly increasing,
gaps allowed) and values ``y: [n]`` and returns a :class:`TrendTest` for the chosen
:class:`TrendMethod`:

- ``ORIGINAL`` - Mann-Kendall on all n samples with the independence variance.
  Wrong under autocorrelation (kept as the textbook baseline).
- ``HAMED_RAO`` - S on all n samples, Var S inflated by the rank autocorrelation of the
  Sen-detrended series (bounded lags, positive floor; :mod:`llmsys.aging.autocorr`).
- ``SIEVE_BOOTSTRAP`` (default) - the series is reduced to ``aggregate_bins`` block means
  over equal time bins; S is computed on those means, and its null variance is the mean
  square of S over ``bootstrap_replicates`` AR(p) sieve-bootstrap series fitted (Burg,
  AIC, p <= ``max_ar_order``) to the detrended means (:class:`Detrend`). z =
  continuity-corrected S / sqrt(Var S) and log10 p come from the normal log-survival
  function, so p is never floored at 1/(B+1). This is the method the validation shows
  holds its size at n >= 1e4 (docs/benchmarks.md).

  The slope interval uses a second sieve variance whose AR coefficients are
  bias-corrected by Kilian's (1998) bootstrap over ``bias_replicates`` series detrended
  the same way (:mod:`llmsys.aging.autocorr`): without it Var S is low on persistent noise
  and the interval under-covers (0.932 at phi = 0.99, n = 1e4). The test keeps the
  uncorrected variance unless ``correct_test_variance``: on series whose residuals are
  deterministic (a page-quantised staircase, a kink where two campaign segments meet) the
  correction pushes the AR fit to the unit-root edge and hides real leaks, while on AR
  noise it only matters for n ~ 1e3 at phi = 0.99 (size 0.0965 -> 0.056).

Every method also returns the Sen slope interval from order statistics of the pairwise
slopes of the series it tested, with its own Var S (so the interval widens with the
autocorrelation correction): Sen (1968, "Estimates of the regression coefficient based on
Kendall's tau", JASA 63) inverts the Mann-Kendall test, so the interval covers as well as
Var S describes the noise - an underestimated Var S is an under-covering interval.
Because that Var S is itself estimated from the series, whose effective sample size
m_eff = n_tested * (independence Var S) / (interval Var S) can be small (about 50 for
AR(1) phi = 0.99 on 1,024 block means), the interval's critical value is Student's t
with m_eff - 2 degrees of freedom instead of the normal one - the effective-sample-size
correction of Santer et al. (2000, "Statistical significance of trends and trend
differences in layer-average atmospheric temperature time series", J. Geophys. Res.
105(D6)). It tends to the normal value as m_eff grows; the test's p-value keeps the
normal reference (validated size).
The random generator is seeded from ``seed``: same input, same result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import numpy.typing as npt
from scipy.stats import norm
from scipy.stats import t as student_t

from llmsys.aging.autocorr import (
    aggregate_time_bins,
    hamed_rao_var_s,
    ols_residuals,
    sieve_bootstrap_var_s,
)
from llmsys.aging.growth import shape_residuals
from llmsys.aging.mann_kendall import (
    as_series,
    log10_p_value,
    mann_kendall_s,
    p_from_log10,
    z_score,
)
from llmsys.aging.options import Alternative, Detrend, TrendMethod
from llmsys.aging.sen_slope import sen_slope, sen_slope_ci
from llmsys.aging.stats_errors import SeriesError, StatsConfigError

MIN_SAMPLES = 10
"""Fewest samples a metric may have for a trend test."""


@dataclass(frozen=True, slots=True)
class TrendConfig:
    """Options of :func:`trend_test`; every choice is recorded with the results."""

    method: TrendMethod = TrendMethod.SIEVE_BOOTSTRAP
    """Significance method; the default is the one validated to hold its size."""
    alternative: Alternative = Alternative.INCREASING
    """Direction of the alternative hypothesis."""
    confidence: float = 0.95
    """Coverage of the Sen slope interval, in (0, 1)."""
    aggregate_bins: int = 1024
    """Sieve bootstrap: number of equal time bins whose means are tested (>= 16)."""
    bootstrap_replicates: int = 400
    """Sieve bootstrap: simulated series for the null variance of S (>= 20)."""
    max_ar_order: int = 10
    """Sieve bootstrap: largest AR order AIC may choose (0..50)."""
    bias_replicates: int = 200
    """Sieve bootstrap: series for Kilian's AR bias correction of the interval's variance
    (0: off, else >= 20)."""
    correct_test_variance: bool = False
    """Sieve bootstrap: test with the bias-corrected variance too (see the module docstring)."""
    hamed_rao_max_lag: int | None = None
    """Hamed-Rao: lags summed; None means 10 log10 n."""
    vif_floor: float = 0.01
    """Hamed-Rao: smallest variance inflation factor allowed (> 0)."""
    detrend: Detrend = Detrend.LINE
    """Sieve bootstrap: what is removed before the noise model is fitted."""
    seed: int = 0
    """Seed of the bootstrap and slope-sampling generators."""

    def __post_init__(self) -> None:
        if not isinstance(self.method, TrendMethod) or not isinstance(
            self.alternative, Alternative
        ):
            raise StatsConfigError("method and alternative must be TrendMethod / Alternative")
        if not isinstance(self.detrend, Detrend):
            raise StatsConfigError(f"detrend must be a Detrend, got {self.detrend!r}")
        if not 0.0 < self.confidence < 1.0:
            raise StatsConfigError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.aggregate_bins < 16:
            raise StatsConfigError(f"aggregate_bins must be >= 16, got {self.aggregate_bins}")
        if self.bootstrap_replicates < 20:
            raise StatsConfigError(
                f"bootstrap_replicates must be >= 20, got {self.bootstrap_replicates}"
            )
        if self.bias_replicates != 0 and self.bias_replicates < 20:
            raise StatsConfigError(
                f"bias_replicates must be 0 or >= 20, got {self.bias_replicates}"
            )
        if not 0 <= self.max_ar_order <= 50:
            raise StatsConfigError(f"max_ar_order must be in 0..50, got {self.max_ar_order}")
        if self.hamed_rao_max_lag is not None and self.hamed_rao_max_lag < 1:
            raise StatsConfigError(f"hamed_rao_max_lag must be >= 1, got {self.hamed_rao_max_lag}")
        if not self.vif_floor > 0.0:
            raise StatsConfigError(f"vif_floor must be > 0, got {self.vif_floor}")


@dataclass(frozen=True, slots=True)
class TrendTest:
    """Significance of a monotonic trend in one series, and its slope interval."""

    method: TrendMethod
    """Method used."""
    alternative: Alternative
    """Alternative the p-value refers to."""
    n: int
    """Samples in the input series."""
    n_tested: int
    """Points S was computed on (block means for the sieve bootstrap, else n)."""
    s: int
    """Mann-Kendall S of the tested points."""
    var_s: float
    """Variance of S the test used (> 0): independence, Hamed-Rao or bootstrap."""
    interval_var_s: float
    """Variance of S the slope interval used (> 0; the bias-corrected one for the sieve)."""
    z: float
    """Continuity-corrected z."""
    log10_p: float
    """log10 p-value; finite, <= 0."""
    p_value: float
    """10**log10_p (0.0 on underflow)."""
    slope_ci_per_s: tuple[float, float]
    """Sen slope interval at ``confidence``, y units per second."""
    ar_order: int | None
    """AR order the sieve chose (None for other methods)."""
    variance_inflation: float
    """var_s divided by the independence variance of the tested points."""

    def __post_init__(self) -> None:
        if not (
            self.var_s > 0.0
            and self.interval_var_s > 0.0
            and math.isfinite(self.log10_p)
            and self.log10_p <= 0.0
        ):
            raise SeriesError(f"invalid trend test: var_s={self.var_s} log10_p={self.log10_p}")


def validate_series(t_s: npt.ArrayLike, y: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return finite float64 ``(t_s, y)``; raise :class:`SeriesError` unless t increases."""
    t = as_series(t_s, "t_s", MIN_SAMPLES)
    v = as_series(y, "y", MIN_SAMPLES)
    if t.shape != v.shape:
        raise SeriesError(f"t_s and y differ in length: {t.shape[0]} vs {v.shape[0]}")
    if not np.all(np.diff(t) > 0):
        raise SeriesError("t_s must be strictly increasing")
    return t, v


def trend_test(
    t_s: npt.ArrayLike, y: npt.ArrayLike, config: TrendConfig | None = None
) -> TrendTest:
    """Test ``y: [n]`` at times ``t_s: [n]`` (seconds) for a monotonic trend.

    Raises :class:`SeriesError` for n < 10, non-finite values or non-increasing time.
    """
    cfg = config if config is not None else TrendConfig()
    t, v = validate_series(t_s, y)
    n = t.shape[0]
    ar_order: int | None = None
    if cfg.method is TrendMethod.SIEVE_BOOTSTRAP:
        t_used, v_used = aggregate_time_bins(t, v, cfg.aggregate_bins)
        if t_used.shape[0] < MIN_SAMPLES:
            raise SeriesError(f"only {t_used.shape[0]} non-empty time bins; need {MIN_SAMPLES}")
        s, var_iid = mann_kendall_s(v_used)
        detrend: Callable[[np.ndarray], np.ndarray] = ols_residuals
        if cfg.detrend is Detrend.SHAPE:
            e = shape_residuals(t_used, v_used[None, :])[0]
            detrend = partial(shape_residuals, t_used)
        else:
            e = v_used - _robust_slope(t_used, v_used, cfg.seed) * t_used
        rng = np.random.default_rng(cfg.seed)
        var_s, fit = sieve_bootstrap_var_s(
            e, cfg.bootstrap_replicates, cfg.max_ar_order, rng, 0, detrend
        )
        ar_order = fit.order
        var_ci = var_s
        if cfg.bias_replicates > 0:
            var_ci, _ = sieve_bootstrap_var_s(
                e, cfg.bootstrap_replicates, cfg.max_ar_order, rng, cfg.bias_replicates, detrend
            )
        if cfg.correct_test_variance:
            var_s = var_ci
    else:
        t_used, v_used = t, v
        s, var_iid = mann_kendall_s(v)
        var_s = var_iid
        if cfg.method is TrendMethod.HAMED_RAO:
            slope = _robust_slope(t, v, cfg.seed)
            var_s, _ = hamed_rao_var_s(v - slope * t, var_iid, cfg.hamed_rao_max_lag, cfg.vif_floor)
        var_s = max(var_s, 1.0)
        var_ci = var_s
    z = z_score(s, var_s)
    log10_p = log10_p_value(z, cfg.alternative)
    inflation = var_s / var_iid if var_iid > 0 else 1.0
    ci_inflation = var_ci / var_iid if var_iid > 0 else 1.0
    ci = sen_slope_ci(
        t_used,
        v_used,
        var_ci * _t_widening(cfg.confidence, t_used.shape[0] / ci_inflation) ** 2,
        cfg.confidence,
        seed=cfg.seed,
    )
    return TrendTest(
        method=cfg.method,
        alternative=cfg.alternative,
        n=n,
        n_tested=int(t_used.shape[0]),
        s=s,
        var_s=var_s,
        interval_var_s=var_ci,
        z=z,
        log10_p=log10_p,
        p_value=p_from_log10(log10_p),
        slope_ci_per_s=ci,
        ar_order=ar_order,
        variance_inflation=inflation,
    )


def _t_widening(confidence: float, effective_n: float) -> float:
    """Ratio of the t quantile (``effective_n - 2`` df, at least 1) to the normal one."""
    q = 0.5 + confidence / 2.0
    df = max(effective_n - 2.0, 1.0)
    return float(student_t.ppf(q, df) / norm.ppf(q))


def _robust_slope(t: np.ndarray, v: np.ndarray, seed: int) -> float:
    """Sen slope, or 0 when every value is equal (nothing to detrend)."""
    if float(np.ptp(v)) == 0.0:
        return 0.0
    return sen_slope(t, v, seed=seed).slope
