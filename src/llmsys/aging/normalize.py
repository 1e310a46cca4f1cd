"""Slopes per unit of work: per hour, per 1,000 requests, per million tokens.

Protocol: leaks follow work, not wall time, so :func:`work_slopes` regresses a metric on
the cumulative request and token counters sampled with it (exact Theil-Sen, pairs with
equal counter values skipped) and scales the slopes to per-1,000-requests and
per-million-tokens. A counter that is absent, has fewer than ``MIN_SAMPLES`` valid rows
with the metric, or never changes gives None.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from llmsys.aging.sen_slope import sen_slope

FloatArray = npt.NDArray[np.float64]
SECONDS_PER_HOUR = 3600.0
MIN_SAMPLES = 10


@dataclass(frozen=True, slots=True)
class WorkSlopes:
    """Theil-Sen slopes of one metric against cumulative work counters."""

    per_1k_requests: float | None
    """Metric units per 1,000 requests, or None without a usable request counter."""
    per_million_tokens: float | None
    """Metric units per 1,000,000 tokens, or None without a usable token counter."""


def per_hour(slope_per_s: float) -> float:
    """Convert a per-second slope to per-hour."""
    return slope_per_s * SECONDS_PER_HOUR


def _counter_slope(
    counter: FloatArray | None, y: FloatArray, scale: float, seed: int
) -> float | None:
    if counter is None:
        return None
    ok = np.isfinite(counter) & np.isfinite(y)
    if int(np.count_nonzero(ok)) < MIN_SAMPLES:
        return None
    c = counter[ok]
    if float(np.ptp(c)) == 0.0:
        return None
    return sen_slope(c, y[ok], seed=seed).slope * scale


def work_slopes(
    y: FloatArray,
    requests: FloatArray | None = None,
    tokens: FloatArray | None = None,
    *,
    seed: int = 0,
) -> WorkSlopes:
    """Slopes of ``y: [n]`` per 1,000 requests and per million tokens.

    ``requests, tokens: [n]`` cumulative counters at the same samples (NaN = not sampled).
    """
    return WorkSlopes(
        per_1k_requests=_counter_slope(requests, y, 1_000.0, seed),
        per_million_tokens=_counter_slope(tokens, y, 1_000_000.0, seed),
    )
