"""Multiple-testing corrections over a declared family, in log10 p space.

Protocol: :func:`adjust_log10_p` takes the family's ``log10_p: [m]`` (finite, <= 0) and a
:class:`Correction` and returns adjusted log10 p-values ``[m]`` in the input order;
:func:`significant_after` compares them with log10 alpha. Working in log space keeps the ranking
exact when p underflows float64 (1 Hz leak series reach p ~ 1e-78000), where
pymannkendall's p = 0 makes every Benjamini-Hochberg rank a tie.

- ``BH``   Benjamini-Hochberg (1995) step-up, FDR under independence / PRDS.
- ``BY``   Benjamini-Yekutieli (2001): BH times sum_{i<=m} 1/i, FDR under any dependence.
- ``HOLM`` Holm (1979) step-down, family-wise error rate.
- ``NONE`` no adjustment.
"""

from __future__ import annotations

import math
from enum import Enum

import numpy as np
import numpy.typing as npt

from llmsys.aging.stats_errors import SeriesError, StatsConfigError

FloatArray = npt.NDArray[np.float64]


class Correction(Enum):
    """Multiple-testing correction applied over the family."""

    BH = "bh"
    BY = "by"
    HOLM = "holm"
    NONE = "none"


def adjust_log10_p(log10_p: npt.ArrayLike, correction: Correction) -> FloatArray:
    """Adjusted log10 p-values ``[m]`` (capped at 0) for ``log10_p: [m]``."""
    lp = np.asarray(log10_p, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(lp)) or np.any(lp > 1e-12):
        raise SeriesError("log10 p-values must be finite and <= 0")
    m = lp.shape[0]
    if m == 0 or correction is Correction.NONE:
        return np.minimum(lp, 0.0)
    order = np.argsort(lp, kind="stable")
    ranked = lp[order]
    rank = np.arange(1, m + 1, dtype=np.float64)
    if correction in (Correction.BH, Correction.BY):
        scaled = ranked + np.log10(m / rank)
        if correction is Correction.BY:
            scaled = scaled + math.log10(float(np.sum(1.0 / rank)))
        adj_sorted = np.minimum.accumulate(scaled[::-1])[::-1]
    elif correction is Correction.HOLM:
        adj_sorted = np.maximum.accumulate(ranked + np.log10(m - rank + 1.0))
    else:  # pragma: no cover - Enum is exhaustive
        raise StatsConfigError(f"unknown correction {correction!r}")
    out = np.empty(m, dtype=np.float64)
    out[order] = np.minimum(adj_sorted, 0.0)
    return out


def significant_after(adjusted_log10_p: npt.ArrayLike, alpha: float) -> npt.NDArray[np.bool_]:
    """Boolean ``[m]``: adjusted p <= alpha. Raises :class:`StatsConfigError` unless 0<alpha<1."""
    if not 0.0 < alpha < 1.0:
        raise StatsConfigError(f"alpha must be in (0, 1), got {alpha}")
    result: npt.NDArray[np.bool_] = np.asarray(adjusted_log10_p) <= math.log10(alpha)
    return result
