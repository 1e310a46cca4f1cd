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


def shape_residuals(t_s: FloatArray, rows: FloatArray) -> FloatArray:
    """Residuals ``[B, m]`` of each row of ``rows: [B, m]`` around its BIC-best shape.

    The shapes are :func:`classify_growth`'s (least-squares line; saturating curve with
    tau on the same grid, kept only if tau < span/2; one step with segments of at least
    max(3, m // 20)) plus the bounded cache's own shape, a line up to a knee and flat after
    it (knee at any sample at least max(3, m // 20) from either end, or at any of 37 times
    over 5-95 % of the span - the latter can fall inside a gap; k = 3), fitted to every row
    at once. The trend test estimates its
    noise model from these residuals: residuals around a straight line would keep the bend
    of a saturating cache or the jump of a step, which the noise model would then read as
    near-unit-root persistence (a noise-free cache that fills in the first 30 % of the run
    came out at p = 0.26). ``t_s: [m]`` increasing; ``m >= 12``.
    """
    y = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    m = y.shape[1]
    x = (t_s - t_s[0]) / max(float(t_s[-1] - t_s[0]), 1e-300)
    # least-squares line
    q, _ = np.linalg.qr(np.column_stack([np.ones(m), x - x.mean()]))
    best_r = y - (y @ q) @ q.T
    best_bic = _bic_rows(best_r, 2)
    # saturating curves, same tau grid as _sse_saturating (span normalised to 1)
    for tau in np.geomspace(0.01, 2.0, 48):
        if tau >= 0.5:
            break
        q, _ = np.linalg.qr(np.column_stack([np.ones(m), 1.0 - np.exp(-x / tau)]))
        r = y - (y @ q) @ q.T
        bic = _bic_rows(r, 3)
        better = bic < best_bic
        best_r[better], best_bic[better] = r[better], bic[better]
    # bounded cache with a hard knee: a line up to sample k, flat after it; every k at
    # once from prefix sums (regression on h_k = min(x, x_k), centred)
    min_size = max(3, m // 20)
    if m >= 2 * min_size:
        yc = y - y.mean(axis=1, keepdims=True)
        k = np.arange(min_size - 1, m - min_size)
        tail = (m - 1 - k).astype(np.float64)
        xk = x[k]
        sum_h = np.cumsum(x)[k] + tail * xk
        shh = np.cumsum(x * x)[k] + tail * xk * xk - sum_h * sum_h / m
        cxy = np.cumsum(yc * x[None, :], axis=1)[:, k]
        shy = cxy + xk[None, :] * (-np.cumsum(yc, axis=1)[:, k])  # sum of yc is 0
        syy = np.einsum("ij,ij->i", yc, yc)
        sse = syy[:, None] - shy * shy / np.maximum(shh, 1e-300)[None, :]
        pick = np.argmin(sse, axis=1)
        rows_idx = np.arange(y.shape[0])
        h = np.minimum(x[None, :], xk[pick][:, None])
        h -= h.mean(axis=1, keepdims=True)
        beta = shy[rows_idx, pick] / np.maximum(shh[pick], 1e-300)
        r = yc - beta[:, None] * h
        bic = _bic_rows(r, 3)
        better = bic < best_bic
        best_r[better], best_bic[better] = r[better], bic[better]
    # the same with the knee on a grid of times, which also puts knees inside gaps
    for knee in np.linspace(0.05, 0.95, 37):
        q, _ = np.linalg.qr(np.column_stack([np.ones(m), np.minimum(x, knee)]))
        r = y - (y @ q) @ q.T
        bic = _bic_rows(r, 3)
        better = bic < best_bic
        best_r[better], best_bic[better] = r[better], bic[better]
    # one step: every split k with both segments >= min_size, per row
    if m >= 2 * min_size:
        yc = y - y.mean(axis=1, keepdims=True)
        c1 = np.cumsum(yc, axis=1)
        c2 = np.cumsum(yc * yc, axis=1)
        k = np.arange(min_size, m - min_size + 1)
        left = c2[:, k - 1] - c1[:, k - 1] ** 2 / k
        right = (c2[:, -1:] - c2[:, k - 1]) - (c1[:, -1:] - c1[:, k - 1]) ** 2 / (m - k)
        split = k[np.argmin(left + right, axis=1)]
        before = np.arange(m)[None, :] < split[:, None]
        mean_l = np.sum(np.where(before, yc, 0.0), axis=1) / split
        mean_r = np.sum(np.where(before, 0.0, yc), axis=1) / (m - split)
        r = yc - np.where(before, mean_l[:, None], mean_r[:, None])
        bic = _bic_rows(r, 3)
        better = bic < best_bic
        best_r[better] = r[better]
    out: FloatArray = best_r
    return out


def _bic_rows(r: FloatArray, k: int) -> FloatArray:
    m = r.shape[1]
    sse = np.maximum(np.einsum("ij,ij->i", r, r), 1e-300)
    out: FloatArray = m * np.log(sse / m) + k * math.log(m)
    return out


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
