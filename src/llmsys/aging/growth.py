"""Growth classification (linear, saturating, step) and time to exhaustion.

Protocol: :func:`classify_growth` fits three shapes to block means ``(t_s: [m], y: [m])``
of a series whose trend was found significant, and picks the one with the lowest BIC
``m log(SSE/m) + k log m``:

- ``LINEAR``     a + b t (k = 2) - a leak; extrapolating it gives a time to exhaustion;
- ``SATURATING`` a + c (1 - exp(-(t - t0)/tau)), tau on a geometric grid (k = 3), kept only
  if it visibly bends (tau < span/2) - a bounded cache; no time to exhaustion;
- ``STEP``       two levels with one jump (k = 3) - a one-off allocation; no extrapolation.

:func:`time_to_exhaustion` extrapolates a linear trend to ``capacity`` and returns the
time and its interval from the slope interval (the far end is None when the slope interval
reaches 0: the data cannot bound it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


class Growth(Enum):
    """Shape of a metric's growth."""

    NONE = "none"
    LINEAR = "linear"
    SATURATING = "saturating"
    STEP = "step"


@dataclass(frozen=True, slots=True)
class TimeToExhaustion:
    """When a linearly growing metric reaches its capacity."""

    tte_s: float
    """Seconds from the last sample until the fitted line reaches capacity (>= 0)."""
    tte_low_s: float
    """Lower end of the interval (from the upper slope bound)."""
    tte_high_s: float | None
    """Upper end (from the lower slope bound); None when that bound is <= 0."""


def _bic(sse: float, m: int, k: int) -> float:
    return m * math.log(max(sse, 1e-300) / m) + k * math.log(m)


def _sse_linear(t: FloatArray, y: FloatArray) -> float:
    coef = np.polyfit(t, y, 1)
    r = y - np.polyval(coef, t)
    return float(np.dot(r, r))


def _sse_step(y: FloatArray, min_size: int) -> float:
    m = y.shape[0]
    c1 = np.cumsum(y)
    c2 = np.cumsum(y * y)
    k = np.arange(min_size, m - min_size + 1)
    left = c2[k - 1] - c1[k - 1] ** 2 / k
    right = (c2[-1] - c2[k - 1]) - (c1[-1] - c1[k - 1]) ** 2 / (m - k)
    return float(np.min(left + right)) if k.size else math.inf


def _sse_saturating(t: FloatArray, y: FloatArray) -> tuple[float, float]:
    span = float(t[-1] - t[0])
    best, best_tau = math.inf, math.inf
    x = t - t[0]
    for tau in np.geomspace(span / 100.0, span * 2.0, 48):
        design = np.column_stack([np.ones_like(x), 1.0 - np.exp(-x / tau)])
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        r = y - design @ coef
        sse = float(np.dot(r, r))
        if sse < best:
            best, best_tau = sse, float(tau)
    return best, best_tau


def classify_growth(t_s: FloatArray, y: FloatArray, significant: bool) -> Growth:
    """Classify ``y: [m]`` at ``t_s: [m]`` (block means); NONE when not ``significant``."""
    m = t_s.shape[0]
    if not significant or m < 12 or float(np.ptp(y)) == 0.0:
        return Growth.NONE
    span = float(t_s[-1] - t_s[0])
    bic_lin = _bic(_sse_linear(t_s, y), m, 2)
    bic_step = _bic(_sse_step(y, max(3, m // 20)), m, 3)
    sse_sat, tau = _sse_saturating(t_s, y)
    bic_sat = _bic(sse_sat, m, 3) if tau < 0.5 * span else math.inf
    best = min(bic_lin, bic_step, bic_sat)
    if best == bic_lin:
        return Growth.LINEAR
    return Growth.STEP if best == bic_step else Growth.SATURATING


def time_to_exhaustion(
    current: float, capacity: float, slope_per_s: float, slope_ci_per_s: tuple[float, float]
) -> TimeToExhaustion | None:
    """Time for ``current`` to reach ``capacity`` at ``slope_per_s``; None if it never does."""
    if not slope_per_s > 0.0 or not math.isfinite(capacity):
        return None
    room = max(capacity - current, 0.0)
    low, high = slope_ci_per_s
    tte = room / slope_per_s
    tte_low = room / high if high > 0.0 else tte
    tte_high = room / low if low > 0.0 else None
    return TimeToExhaustion(tte_s=tte, tte_low_s=min(tte_low, tte), tte_high_s=tte_high)
