"""Warm-up trimming and leak-onset detection by piecewise-linear change points.

Protocol: :func:`detect_changepoints` reduces ``(t_s: [n], y: [n])`` to at most ``bins``
block means, segments them with PELT (ruptures) under a linear-regression cost
(``ruptures.costs.CostLinear``, columns ``y | 1 | t``) and a BIC-type penalty
``penalty_factor * log(m) * sigma^2`` (sigma^2: residual variance of one straight line, so
the penalty scales with the data), and returns a :class:`ChangePoints` record:

- ``warmup_end_t_s`` - the first break, if it falls within ``warmup_max_fraction`` of the
  run: samples before it are start-up transients and are trimmed before testing;
- ``onset_t_s`` - the start of the last segment, when that segment grows and the one before
  it grew at most a quarter as fast: where a leak that starts mid-run begins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import ruptures as rpt

from llmsys.aging.autocorr import aggregate_time_bins

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class ChangePoints:
    """Change points of one series (times in the series' seconds)."""

    breaks_t_s: tuple[float, ...]
    """Times where the piecewise-linear fit changes (excluding the ends)."""
    warmup_end_t_s: float | None
    """End of the start-up transient, or None when there is none."""
    onset_t_s: float | None
    """Start of a leak that begins mid-run, or None."""
    segment_slopes_per_s: tuple[float, ...]
    """Least-squares slope of each segment, y units per second."""


def _segment_slope(t: FloatArray, y: FloatArray) -> float:
    if t.shape[0] < 2 or float(np.ptp(t)) == 0.0:
        return 0.0
    return float(np.polyfit(t, y, 1)[0])


def detect_changepoints(
    t_s: FloatArray,
    y: FloatArray,
    *,
    bins: int = 160,
    warmup_max_fraction: float = 0.2,
    penalty_factor: float = 10.0,
    min_segment_fraction: float = 0.05,
) -> ChangePoints:
    """Find warm-up end and leak onset in ``y: [n]`` at ``t_s: [n]`` (increasing seconds)."""
    tb, yb = aggregate_time_bins(t_s, y, bins)
    m = tb.shape[0]
    empty = ChangePoints((), None, None, (_segment_slope(tb, yb),))
    if m < 20 or float(np.ptp(yb)) == 0.0:
        return empty
    tn = (tb - tb[0]) / max(float(tb[-1] - tb[0]), 1e-300)
    resid = yb - np.polyval(np.polyfit(tn, yb, 1), tn)
    sigma2 = float(np.mean(resid * resid))
    if sigma2 <= 0.0:
        return empty
    scale = math.sqrt(sigma2)
    signal = np.column_stack([yb / scale, np.ones(m), tn])
    min_size = max(4, int(min_segment_fraction * m))
    algo = rpt.Pelt(custom_cost=rpt.costs.CostLinear(), min_size=min_size, jump=1).fit(signal)
    ends = algo.predict(pen=penalty_factor * math.log(m))
    starts = [0, *ends[:-1]]
    slopes = tuple(_segment_slope(tb[a:b], yb[a:b]) for a, b in zip(starts, ends, strict=True))
    breaks = tuple(float(tb[b]) for b in ends[:-1])
    duration = float(t_s[-1] - t_s[0])
    warmup = None
    first_growth = 0
    if breaks and breaks[0] - float(t_s[0]) <= warmup_max_fraction * duration:
        warmup = breaks[0]
        first_growth = 1
    onset = None
    if len(slopes) - first_growth >= 2:
        last, before = slopes[-1], slopes[-2]
        if last > 0.0 and before <= 0.25 * last:
            onset = float(tb[starts[-1]])
    return ChangePoints(breaks, warmup, onset, slopes)
