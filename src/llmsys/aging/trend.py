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
  AIC, p <= ``max_ar_order``) to the Sen-detrended means. z = continuity-corrected S /
  sqrt(Var S) and log10 p come from the normal log-survival function, so p is never
  floored at 1/(B+1). This is the method the validation shows holds its size
  (docs/benchmarks.md).

Every method also returns the Sen slope interval from order statistics of the pairwise
slopes of the series it tested, with its own Var S (so the interval widens with the
autocorrelation correction). The random generator is seeded from ``seed``: same input,
same result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
import numpy.typing as npt

from llmsys.aging.autocorr import aggregate_time_bins, hamed_rao_var_s, sieve_bootstrap_var_s
from llmsys.aging.mann_kendall import (
    Alternative,
    as_series,
    log10_p_value,
    mann_kendall_s,
    p_from_log10,
    z_score,
)
from llmsys.aging.sen_slope import sen_slope, sen_slope_ci
from llmsys.aging.stats_errors import SeriesError, StatsConfigError

MIN_SAMPLES = 10
"""Fewest samples a metric may have for a trend test."""


class TrendMethod(Enum):
    """How the significance of S accounts for autocorrelation."""

    ORIGINAL = "original"
    HAMED_RAO = "hamed-rao"
    SIEVE_BOOTSTRAP = "sieve-bootstrap"


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
    hamed_rao_max_lag: int | None = None
    """Hamed-Rao: lags summed; None means 10 log10 n."""
    vif_floor: float = 0.01
    """Hamed-Rao: smallest variance inflation factor allowed (> 0)."""
    seed: int = 0
    """Seed of the bootstrap and slope-sampling generators."""

    def __post_init__(self) -> None:
        if not isinstance(self.method, TrendMethod) or not isinstance(
            self.alternative, Alternative
        ):
            raise StatsConfigError("method and alternative must be TrendMethod / Alternative")
        if not 0.0 < self.confidence < 1.0:
            raise StatsConfigError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.aggregate_bins < 16:
            raise StatsConfigError(f"aggregate_bins must be >= 16, got {self.aggregate_bins}")
        if self.bootstrap_replicates < 20:
            raise StatsConfigError(
                f"bootstrap_replicates must be >= 20, got {self.bootstrap_replicates}"
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
    """Variance of S used (> 0): independence, Hamed-Rao or bootstrap."""
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
        if not (self.var_s > 0.0 and math.isfinite(self.log10_p) and self.log10_p <= 0.0):
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
        slope = _robust_slope(t_used, v_used, cfg.seed)
        e = v_used - slope * t_used
        rng = np.random.default_rng(cfg.seed)
        var_s, fit = sieve_bootstrap_var_s(e, cfg.bootstrap_replicates, cfg.max_ar_order, rng)
        ar_order = fit.order
    else:
        t_used, v_used = t, v
        s, var_iid = mann_kendall_s(v)
        var_s = var_iid
        if cfg.method is TrendMethod.HAMED_RAO:
            slope = _robust_slope(t, v, cfg.seed)
            var_s, _ = hamed_rao_var_s(v - slope * t, var_iid, cfg.hamed_rao_max_lag, cfg.vif_floor)
        var_s = max(var_s, 1.0)
    z = z_score(s, var_s)
    log10_p = log10_p_value(z, cfg.alternative)
    ci = sen_slope_ci(t_used, v_used, var_s, cfg.confidence, seed=cfg.seed)
    return TrendTest(
        method=cfg.method,
        alternative=cfg.alternative,
        n=n,
        n_tested=int(t_used.shape[0]),
        s=s,
        var_s=var_s,
        z=z,
        log10_p=log10_p,
        p_value=p_from_log10(log10_p),
        slope_ci_per_s=ci,
        ar_order=ar_order,
        variance_inflation=var_s / var_iid if var_iid > 0 else 1.0,
    )


def _robust_slope(t: np.ndarray, v: np.ndarray, seed: int) -> float:
    """Sen slope, or 0 when every value is equal (nothing to detrend)."""
    if float(np.ptp(v)) == 0.0:
        return 0.0
    return sen_slope(t, v, seed=seed).slope
