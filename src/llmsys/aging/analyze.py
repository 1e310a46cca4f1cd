"""The trend-analysis pipeline: per-metric statistics, then the family correction.

Protocol: a :class:`MetricSeries` (``t_s``, ``y`` with NaN = not sampled, optional
cumulative ``requests``/``tokens``) goes through :func:`analyze_metric`:

1. drop unsampled rows, validate (>= 10 samples, strictly increasing time);
2. change points on block means (:mod:`llmsys.aging.changepoint`): trim the warm-up,
   record a mid-run leak onset;
3. :func:`llmsys.aging.trend.trend_test` with the configured method (default: sieve
   bootstrap on block means) -> log10 p, slope interval;
4. exact Theil-Sen slope on every remaining sample, per hour (:mod:`llmsys.aging.sen_slope`);
5. growth class on block means and, for linear growth with a capacity, time to exhaustion;
6. slopes per 1,000 requests / per million tokens when counters are given.

:func:`analyze_family` runs that for every (deployment, metric) pair of the declared family,
applies the :class:`~llmsys.aging.multiple_testing.Correction` over the family's log10 p,
marks ``significant``, sets growth to ``none`` (and no time to exhaustion) for metrics that
are not significant after correction, and records family, correction and alpha.
:meth:`FamilyAnalysis.to_json` gives the CLI's JSON document.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from llmsys.aging.autocorr import aggregate_time_bins
from llmsys.aging.changepoint import detect_changepoints
from llmsys.aging.growth import Growth, classify_growth, time_to_exhaustion
from llmsys.aging.multiple_testing import Correction, adjust_log10_p, significant_after
from llmsys.aging.normalize import per_hour, work_slopes
from llmsys.aging.sen_slope import sen_slope
from llmsys.aging.stats_errors import SeriesError, StatsConfigError
from llmsys.aging.trend import MIN_SAMPLES, TrendConfig, trend_test, validate_series

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class AnalysisConfig:
    """Options of the pipeline; recorded with every result."""

    trend: TrendConfig = field(default_factory=TrendConfig)
    """Significance method, alternative, interval coverage, bootstrap settings."""
    alpha: float = 0.05
    """Family-level significance level, in (0, 1)."""
    correction: Correction = Correction.BH
    """Multiple-testing correction over the family."""
    capacity: float | None = None
    """Capacity the metric exhausts (same unit as the metric, e.g. bytes); None: no TTE."""
    trim_warmup: bool = True
    """Drop samples before a change point found in the first ``warmup_max_fraction``."""
    warmup_max_fraction: float = 0.2
    """Largest fraction of the run that counts as warm-up, in [0, 1)."""
    growth_bins: int = 256
    """Block means used to classify the growth shape (>= 16)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise StatsConfigError(f"alpha must be in (0, 1), got {self.alpha}")
        if not isinstance(self.correction, Correction):
            raise StatsConfigError(f"correction must be a Correction, got {self.correction!r}")
        if self.capacity is not None and not (math.isfinite(self.capacity) and self.capacity > 0):
            raise StatsConfigError(f"capacity must be finite and > 0, got {self.capacity}")
        if not 0.0 <= self.warmup_max_fraction < 1.0:
            raise StatsConfigError(
                f"warmup_max_fraction must be in [0, 1), got {self.warmup_max_fraction}"
            )
        if self.growth_bins < 16:
            raise StatsConfigError(f"growth_bins must be >= 16, got {self.growth_bins}")


@dataclass(frozen=True, slots=True)
class MetricSeries:
    """One metric of one deployment; arrays ``[n]`` aligned, NaN = not sampled."""

    t_s: FloatArray
    """Sample times, seconds."""
    y: FloatArray
    """Metric values (bytes, ms, ...), NaN where not sampled."""
    requests: FloatArray | None = None
    """Cumulative requests at each sample, or None."""
    tokens: FloatArray | None = None
    """Cumulative tokens at each sample, or None."""


@dataclass(frozen=True, slots=True)
class MetricAnalysis:
    """Everything the pipeline found about one metric."""

    n: int
    """Samples analysed (after dropping unsampled rows and the warm-up)."""
    method: str
    """Significance method (TrendMethod value)."""
    log10_p: float
    """log10 p before correction (finite)."""
    p_value: float
    """p before correction (0.0 on underflow)."""
    log10_p_adjusted: float
    """log10 p after the family correction (equals log10_p until corrected)."""
    significant: bool
    """Adjusted p <= alpha."""
    slope_per_h: float
    """Exact Theil-Sen slope, metric units per hour."""
    slope_ci_per_h: tuple[float, float]
    """Slope interval, metric units per hour."""
    growth: Growth
    """Growth shape (NONE unless significant)."""
    tte_h: float | None
    """Hours until ``capacity`` for linear growth, else None."""
    tte_ci_h: tuple[float, float | None] | None
    """Interval of tte_h (upper end None when unbounded), else None."""
    slope_per_1k_requests: float | None
    """Metric units per 1,000 requests, or None."""
    slope_per_million_tokens: float | None
    """Metric units per million tokens, or None."""
    warmup_end_t_s: float | None
    """Warm-up trimmed before this time, or None."""
    onset_t_s: float | None
    """Leak onset time, or None."""
    ar_order: int | None
    """AR order of the sieve bootstrap, or None."""
    variance_inflation: float
    """Var S used / independence Var S."""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict with the CLI contract's keys (and a few more)."""
        return {
            "p_value": self.p_value,
            "log10_p": self.log10_p,
            "log10_p_adjusted": self.log10_p_adjusted,
            "significant": self.significant,
            "slope_per_h": self.slope_per_h,
            "slope_ci_per_h": list(self.slope_ci_per_h),
            "growth": self.growth.value,
            "tte_h": self.tte_h,
            "tte_ci_h": list(self.tte_ci_h) if self.tte_ci_h is not None else None,
            "slope_per_1k_requests": self.slope_per_1k_requests,
            "slope_per_million_tokens": self.slope_per_million_tokens,
            "warmup_end_t_s": self.warmup_end_t_s,
            "onset_t_s": self.onset_t_s,
            "method": self.method,
            "ar_order": self.ar_order,
            "variance_inflation": self.variance_inflation,
            "n": self.n,
        }


@dataclass(frozen=True, slots=True)
class FamilyAnalysis:
    """Results for a declared family of (deployment, metric) tests."""

    metrics: dict[str, MetricAnalysis]
    """Key -> analysis; keys are metric names or ``deployment/metric``."""
    family: tuple[str, ...]
    """The keys of the family, in the order given."""
    correction: Correction
    """Correction applied over the family."""
    alpha: float
    """Family-level significance level."""
    config: AnalysisConfig
    """Full configuration used."""

    def to_json(self) -> dict[str, Any]:
        """The ``llmsys aging analyze --json`` document."""
        trend = self.config.trend
        return {
            "metrics": {k: v.to_json() for k, v in self.metrics.items()},
            "family": list(self.family),
            "correction": self.correction.value,
            "alpha": self.alpha,
            "alternative": trend.alternative.value,
            "method": trend.method.value,
            "detrend": trend.detrend.value,
            "bias_replicates": trend.bias_replicates,
            "capacity": self.config.capacity,
        }


def _present(a: FloatArray | None, keep: npt.NDArray[np.bool_]) -> FloatArray | None:
    return None if a is None else np.asarray(a, dtype=np.float64)[keep]


def analyze_metric(series: MetricSeries, config: AnalysisConfig | None = None) -> MetricAnalysis:
    """Run steps 1-6 of the pipeline on one metric. Raises :class:`SeriesError`."""
    cfg = config if config is not None else AnalysisConfig()
    y_all = np.asarray(series.y, dtype=np.float64)
    t_all = np.asarray(series.t_s, dtype=np.float64)
    if y_all.shape != t_all.shape:
        raise SeriesError(f"t_s and y differ in shape: {t_all.shape} vs {y_all.shape}")
    keep = ~np.isnan(y_all)
    t, y = validate_series(t_all[keep], y_all[keep])
    requests, tokens = _present(series.requests, keep), _present(series.tokens, keep)
    cps = detect_changepoints(t, y, warmup_max_fraction=cfg.warmup_max_fraction)
    warmup = cps.warmup_end_t_s if cfg.trim_warmup else None
    if warmup is not None:
        after = t >= warmup
        if int(np.count_nonzero(after)) >= MIN_SAMPLES:
            t, y = t[after], y[after]
            requests = None if requests is None else requests[after]
            tokens = None if tokens is None else tokens[after]
        else:
            warmup = None
    test = trend_test(t, y, cfg.trend)
    sen = sen_slope(t, y, seed=cfg.trend.seed) if float(np.ptp(y)) > 0 else None
    slope_s = sen.slope if sen is not None else 0.0
    passed = bool(significant_after([test.log10_p], cfg.alpha)[0])
    tb, yb = aggregate_time_bins(t, y, cfg.growth_bins)
    growth = classify_growth(tb, yb, passed)
    work = work_slopes(y, requests, tokens, seed=cfg.trend.seed)
    analysis = MetricAnalysis(
        n=int(t.shape[0]),
        method=test.method.value,
        log10_p=test.log10_p,
        p_value=test.p_value,
        log10_p_adjusted=test.log10_p,
        significant=passed,
        slope_per_h=per_hour(slope_s),
        slope_ci_per_h=(per_hour(test.slope_ci_per_s[0]), per_hour(test.slope_ci_per_s[1])),
        growth=growth,
        tte_h=None,
        tte_ci_h=None,
        slope_per_1k_requests=work.per_1k_requests,
        slope_per_million_tokens=work.per_million_tokens,
        warmup_end_t_s=warmup,
        onset_t_s=cps.onset_t_s,
        ar_order=test.ar_order,
        variance_inflation=test.variance_inflation,
    )
    current = (sen.intercept + slope_s * float(t[-1])) if sen is not None else float(y[-1])
    return _with_tte(analysis, cfg, current, slope_s, test.slope_ci_per_s)


def _with_tte(
    a: MetricAnalysis,
    cfg: AnalysisConfig,
    current: float,
    slope_s: float,
    ci_s: tuple[float, float],
) -> MetricAnalysis:
    if cfg.capacity is None or a.growth is not Growth.LINEAR or not a.significant:
        return replace(a, tte_h=None, tte_ci_h=None)
    tte = time_to_exhaustion(current, cfg.capacity, slope_s, ci_s)
    if tte is None:
        return replace(a, tte_h=None, tte_ci_h=None)
    high = None if tte.tte_high_s is None else tte.tte_high_s / 3600.0
    return replace(a, tte_h=tte.tte_s / 3600.0, tte_ci_h=(tte.tte_low_s / 3600.0, high))


def analyze_family(
    family: Mapping[str, MetricSeries],
    config: AnalysisConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> FamilyAnalysis:
    """Analyse every member of ``family`` (key -> series) and correct over the family.

    ``progress`` is called with each key after it is analysed. Raises :class:`SeriesError`
    naming the key of a series that cannot be analysed.
    """
    cfg = config if config is not None else AnalysisConfig()
    keys = tuple(family)
    raw: dict[str, MetricAnalysis] = {}
    for key in keys:
        try:
            raw[key] = analyze_metric(family[key], cfg)
        except SeriesError as exc:
            raise SeriesError(f"{key}: {exc}") from exc
        if progress is not None:
            progress(key)
    adjusted = adjust_log10_p([raw[k].log10_p for k in keys], cfg.correction)
    passed = significant_after(adjusted, cfg.alpha)
    out: dict[str, MetricAnalysis] = {}
    for key, lp_adj, ok in zip(keys, adjusted, passed, strict=True):
        a = replace(raw[key], log10_p_adjusted=float(lp_adj), significant=bool(ok))
        if not ok:
            a = replace(a, growth=Growth.NONE, tte_h=None, tte_ci_h=None)
        out[key] = a
    return FamilyAnalysis(out, keys, cfg.correction, cfg.alpha, cfg)
