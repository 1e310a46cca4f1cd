"""Mann-Kendall trend statistic in O(n log n) with log-survival p-values.

Protocol: :func:`mann_kendall_s` returns S = #concordant - #discordant pairs of a series in
time order and its tie-corrected variance under independence; :func:`mann_kendall` adds the
continuity-corrected z and a p-value for one :class:`Alternative`. p-values are computed as
``log10_p`` from :func:`scipy.stats.norm.logsf`, which stays finite for any finite z (a 1 Hz
leak series can reach z ~ 600, p ~ 1e-78000); ``p_value`` is ``10**log10_p`` and may
underflow to 0.0, so rank and compare on ``log10_p``.

The discordant count comes from a merge sort (:mod:`llmsys.aging.inversions`), never from
the n x n sign matrix; :mod:`llmsys.aging.reference` keeps the O(n^2) definition for tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.stats import norm

from llmsys.aging.inversions import count_inversions
from llmsys.aging.options import Alternative
from llmsys.aging.stats_errors import SeriesError

_LN10 = math.log(10.0)


@dataclass(frozen=True, slots=True)
class MannKendallResult:
    """Mann-Kendall test of one series under independence (no autocorrelation correction)."""

    n: int
    """Number of samples."""
    s: int
    """S = #(i<j, y_j > y_i) - #(i<j, y_j < y_i)."""
    var_s: float
    """Tie-corrected variance of S under independence."""
    z: float
    """Continuity-corrected standard score (S -/+ 1) / sqrt(var_s); 0 when S == 0."""
    log10_p: float
    """log10 of the p-value for ``alternative``; always finite and <= 0."""
    p_value: float
    """``10**log10_p``; may underflow to 0.0 for huge z (use ``log10_p``)."""
    tau: float
    """Kendall's tau-a, S / (n(n-1)/2), in [-1, 1]."""
    alternative: Alternative
    """The alternative the p-value refers to."""

    def __post_init__(self) -> None:
        if self.n < 0 or not math.isfinite(self.log10_p) or self.log10_p > 0.0:
            raise SeriesError(f"invalid Mann-Kendall result n={self.n} log10_p={self.log10_p}")


def as_series(y: npt.ArrayLike, name: str = "y", min_len: int = 2) -> npt.NDArray[np.float64]:
    """Return ``y`` as a finite 1-D float64 array; raise :class:`SeriesError` otherwise."""
    arr = np.asarray(y, dtype=np.float64)
    if arr.ndim != 1:
        raise SeriesError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] < min_len:
        raise SeriesError(f"{name} needs at least {min_len} samples, got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise SeriesError(f"{name} contains NaN or infinite values")
    return arr


def tie_group_sizes(y: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Sizes of the groups of equal values in ``y: [n]`` (only groups of size >= 2)."""
    _, counts = np.unique(y, return_counts=True)
    sizes: npt.NDArray[np.int64] = counts[counts > 1].astype(np.int64)
    return sizes


def mann_kendall_s(y: npt.ArrayLike) -> tuple[int, float]:
    """Return ``(S, Var S)`` of ``y: [n]`` in time order; Var S is tie-corrected.

    Raises :class:`SeriesError` for non-finite or non-1-D input or n < 2.
    """
    arr = as_series(y)
    n = arr.shape[0]
    discordant, tied = count_inversions(arr)
    total = n * (n - 1) // 2
    s = total - tied - 2 * discordant
    g = tie_group_sizes(arr).astype(np.float64)
    var_s = (
        n * (n - 1.0) * (2.0 * n + 5.0) - float(np.sum(g * (g - 1.0) * (2.0 * g + 5.0)))
    ) / 18.0
    return int(s), float(var_s)


def z_score(s: int, var_s: float) -> float:
    """Continuity-corrected z of S: (S - 1)/sd for S > 0, (S + 1)/sd for S < 0, else 0."""
    if var_s <= 0.0 or s == 0:
        return 0.0
    sd = math.sqrt(var_s)
    return (s - 1) / sd if s > 0 else (s + 1) / sd


def log10_p_value(z: float, alternative: Alternative) -> float:
    """log10 of the normal p-value of ``z`` for ``alternative``; finite for finite z."""
    if alternative is Alternative.INCREASING:
        ln_p = float(norm.logsf(z))
    elif alternative is Alternative.DECREASING:
        ln_p = float(norm.logcdf(z))
    else:
        ln_p = math.log(2.0) + float(norm.logsf(abs(z)))
    return min(ln_p / _LN10, 0.0)


def p_from_log10(log10_p: float) -> float:
    """``10**log10_p``, 0.0 on underflow."""
    return float(10.0**log10_p) if log10_p > -330.0 else 0.0


def mann_kendall(
    y: npt.ArrayLike, alternative: Alternative = Alternative.INCREASING
) -> MannKendallResult:
    """Mann-Kendall test of ``y: [n]`` (time order) assuming independent samples."""
    s, var_s = mann_kendall_s(y)
    n = int(np.asarray(y).shape[0])
    z = z_score(s, var_s)
    log10_p = log10_p_value(z, alternative)
    return MannKendallResult(
        n=n,
        s=s,
        var_s=var_s,
        z=z,
        log10_p=log10_p,
        p_value=p_from_log10(log10_p),
        tau=s / (n * (n - 1) / 2.0),
        alternative=alternative,
    )
