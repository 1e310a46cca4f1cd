"""Exact Theil-Sen slope and order-statistic intervals without materialising n^2 pairs.

Protocol: :func:`pairwise_slope_order_stats` returns chosen order statistics of the
pairwise slopes ``(y_j - y_i) / (x_j - x_i)`` over pairs with ``x_i != x_j``;
:func:`sen_slope` (the median) and :func:`sen_slope_ci` (ranks from a given Var S) are thin
wrappers. ``x`` is any real axis: seconds, cumulative requests, cumulative tokens - it may
be irregular, have gaps, and (for cumulative counters) repeat values.

Algorithm (slope selection by counting). Point i is the line ``L_i(s) = y_i - s x_i``;
two lines cross exactly at the pair's slope, so the number of slopes below ``s`` is the
number of inversions of ``L(s)`` taken in x order (one O(n log n) merge count). A random
sample of pair slopes gives a bracket around the wanted ranks; interpolation search on the
count (bisection when it stalls) narrows it until at most ``max_enumerated`` pairs lie
inside; those pairs are exactly the inversions between the orders at the two ends, listed by
one merge pass, and the answer is selected among them. Time O(n log n) per count, a handful
of counts; memory O(n + max_enumerated).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.stats import norm

from llmsys.aging.inversions import count_inversions, enumerate_crossings
from llmsys.aging.mann_kendall import as_series
from llmsys.aging.stats_errors import SeriesError

_LOG = logging.getLogger(__name__)
FloatArray = npt.NDArray[np.float64]

DEFAULT_MAX_ENUMERATED = 2_000_000
"""Pairs listed explicitly once the bracket holds this few (16 MB of float64)."""
_SAMPLE_PAIRS = 200_000
_MAX_ROUNDS = 200


@dataclass(frozen=True, slots=True)
class SenSlope:
    """Theil-Sen line through (x, y)."""

    slope: float
    """Median pairwise slope, in units of y per unit of x."""
    intercept: float
    """Median of y - slope * x."""
    n_pairs: int
    """Pairs with distinct x that the median was taken over."""


class _Points:
    """Points sorted by (x, y), with the slope count and crossing enumeration over them."""

    def __init__(self, x: FloatArray, y: FloatArray) -> None:
        if np.all(np.diff(x) > 0):
            self.x, self.y = x, y
            x_ties = 0
        else:
            order = np.lexsort((y, x))
            self.x, self.y = x[order], y[order]
            _, counts = np.unique(self.x, return_counts=True)
            x_ties = int(np.sum(counts * (counts - 1) // 2))
        n = self.x.shape[0]
        self.n_pairs: int = int(n * (n - 1) // 2 - x_ties)
        dx = np.diff(self.x)
        dx_min = float(np.min(dx[dx > 0])) if np.any(dx > 0) else 1.0
        span = float(np.max(self.y) - np.min(self.y))
        # nonzero slopes are at least dy_min / x_span in size: a bracket this narrow is one value
        uy = np.unique(self.y)
        dy_min = float(np.min(np.diff(uy))) if uy.shape[0] > 1 else 1.0
        x_span = float(self.x[-1] - self.x[0]) or 1.0
        self.resolution = 1e-6 * dy_min / x_span
        # every pairwise slope lies strictly inside (-bound, bound)
        self.bound = span / dx_min * (1.0 + 1e-9) + 1e-300

    def below(self, s: float) -> int:
        """Number of pairwise slopes strictly below ``s``."""
        if s <= -self.bound:
            return 0
        if s >= self.bound:
            return self.n_pairs
        discordant, _ = count_inversions(self.y - s * self.x)
        return discordant

    def between(self, lo: float, hi: float, expected: int, capped: bool = False) -> FloatArray:
        """Slopes of the pairs in [lo, hi) (``expected`` = below(hi) - below(lo)).

        With ``capped`` only the first ``expected`` found are returned.
        """
        n = self.x.shape[0]
        if lo <= -self.bound:
            order_lo = np.arange(n, dtype=np.int64)
        else:
            order_lo = np.argsort(self.y - lo * self.x, kind="stable").astype(np.int64)
        key_hi = -self.x if hi >= self.bound else self.y - hi * self.x
        slopes, found = enumerate_crossings(order_lo, key_hi, self.x, self.y, expected + 64)
        if found > slopes.shape[0] and not capped:
            slopes, found = enumerate_crossings(order_lo, key_hi, self.x, self.y, found)
        return slopes


def pairwise_slope_order_stats(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    ranks: npt.ArrayLike,
    *,
    max_enumerated: int = DEFAULT_MAX_ENUMERATED,
    seed: int = 0,
) -> FloatArray:
    """Return the order statistics ``ranks`` (0-based) of the pairwise slopes of (x, y).

    ``x, y: [n]`` finite; ``ranks: [r]`` integers in [0, n_pairs) where n_pairs counts pairs
    with distinct x. Returns ``[r]`` float64 in the order of ``ranks``. Raises
    :class:`SeriesError` for bad input, a rank out of range, or no pair with distinct x.
    """
    xs = as_series(x, "x")
    ys = as_series(y, "y")
    if xs.shape != ys.shape:
        raise SeriesError(f"x and y differ in length: {xs.shape[0]} vs {ys.shape[0]}")
    want = np.asarray(ranks, dtype=np.int64).reshape(-1)
    pts = _Points(xs, ys)
    if pts.n_pairs == 0:
        raise SeriesError("no pair of samples has distinct x; the slope is undefined")
    if want.size == 0:
        return np.empty(0, dtype=np.float64)
    if np.any(want < 0) or np.any(want >= pts.n_pairs):
        raise SeriesError(f"slope ranks must lie in [0, {pts.n_pairs}), got {want.tolist()}")
    out = np.empty(want.shape, dtype=np.float64)
    order = np.argsort(want)
    start = 0
    # ranks far apart (an interval's two ends) are selected one cluster at a time
    for stop in range(1, want.size + 1):
        gap_ends = stop == want.size or want[order[stop]] - want[order[start]] > (
            max_enumerated // 2
        )
        if gap_ends:
            idx = order[start:stop]
            out[idx] = _select_cluster(pts, want[idx], max_enumerated, seed)
            start = stop
    return out


def _select_cluster(
    pts: _Points, want: npt.NDArray[np.int64], max_enumerated: int, seed: int
) -> FloatArray:
    """Order statistics ``want`` (spread < max_enumerated/2) of the pairwise slopes."""
    k_min, k_max = int(want.min()), int(want.max())
    lo, hi = -pts.bound, pts.bound
    f_lo, f_hi = 0, pts.n_pairs
    if pts.n_pairs > max_enumerated:
        lo, hi, f_lo, f_hi, tie = _sample_bracket(pts, k_min, k_max, seed, max_enumerated)
        if tie is not None:
            return np.full(want.shape, tie, dtype=np.float64)
        lo, hi, f_lo, f_hi = _narrow(pts, k_min, k_max, (lo, hi, f_lo, f_hi), max_enumerated)
    if f_hi - f_lo > max_enumerated and np.unique(want).size > 1:
        # a tie too large to list sits among the ranks: select them one at a time
        return np.array(
            [
                _select_cluster(pts, want[i : i + 1], max_enumerated, seed)[0]
                for i in range(want.size)
            ]
        )
    if f_hi - f_lo > max_enumerated:
        # a huge tie at one slope value (quantised data): every slope left in the bracket
        # is that value up to rounding, so a few listed ones name it
        _LOG.debug("slope bracket [%r, %r) holds %d tied pairs", lo, hi, f_hi - f_lo)
        some = pts.between(lo, hi, 1024, capped=True)
        value = float(np.median(some)) if some.size else 0.5 * (lo + hi)
        return np.full(want.shape, value, dtype=np.float64)
    inside = pts.between(lo, hi, f_hi - f_lo)
    if inside.shape[0] == 0:
        return np.full(want.shape, lo, dtype=np.float64)
    local = np.clip(want - f_lo, 0, inside.shape[0] - 1)
    part = np.partition(inside, np.unique(local))
    return part[local].astype(np.float64)


def _sample_bracket(
    pts: _Points, k_min: int, k_max: int, seed: int, max_enumerated: int
) -> tuple[float, float, int, int, float | None]:
    """A bracket [lo, hi) around ranks k_min..k_max from a random sample of pair slopes.

    The last element is the answer itself when the sample shows a massive tie at the wanted
    ranks (a flat quantised metric: most pairs have slope exactly 0) and counting confirms it.
    """
    n = pts.x.shape[0]
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, _SAMPLE_PAIRS)
    j = rng.integers(0, n, _SAMPLE_PAIRS)
    dx = pts.x[j] - pts.x[i]
    keep = dx != 0
    sample = np.sort((pts.y[j] - pts.y[i])[keep] / dx[keep])
    m = sample.shape[0]
    lo, hi, f_lo, f_hi = -pts.bound, pts.bound, 0, pts.n_pairs
    if m < 100:
        return lo, hi, f_lo, f_hi, None
    q_lo = k_min / pts.n_pairs
    q_hi = (k_max + 1) / pts.n_pairs
    centre = float(sample[min(int(0.5 * (q_lo + q_hi) * m), m - 1)])
    tied = int(np.searchsorted(sample, centre, "right") - np.searchsorted(sample, centre, "left"))
    if tied / m * pts.n_pairs > max_enumerated:
        eps = 1e-9 * abs(centre) + 1e-300
        t_lo, t_hi = pts.below(centre - eps), pts.below(centre + eps)
        if t_lo <= k_min and t_hi > k_max:
            if t_hi - t_lo > max_enumerated:
                return lo, hi, f_lo, f_hi, centre
            return centre - eps, centre + eps, t_lo, t_hi, None
    margin_lo = 4.0 * math.sqrt(max(q_lo * (1 - q_lo), 1.0 / m) / m)
    margin_hi = 4.0 * math.sqrt(max(q_hi * (1 - q_hi), 1.0 / m) / m)
    if q_lo - margin_lo > 0:
        s = float(sample[int((q_lo - margin_lo) * (m - 1))])
        f = pts.below(s)
        if f <= k_min:
            lo, f_lo = s, f
    if q_hi + margin_hi < 1:
        s = float(sample[min(math.ceil((q_hi + margin_hi) * (m - 1)), m - 1)])
        f = pts.below(s)
        if f > k_max and s > lo:
            hi, f_hi = s, f
    return lo, hi, f_lo, f_hi, None


def _narrow(
    pts: _Points,
    k_min: int,
    k_max: int,
    bracket: tuple[float, float, int, int],
    max_enumerated: int,
) -> tuple[float, float, int, int]:
    """Shrink the bracket until it holds at most ``max_enumerated`` pairs."""
    lo, hi, f_lo, f_hi = bracket
    pad = max_enumerated // 4
    interpolate = True
    for _ in range(_MAX_ROUNDS):
        span = f_hi - f_lo
        if span <= max_enumerated:
            break
        if interpolate:
            fr = np.clip(np.array([k_min - pad - f_lo, k_max + 1 + pad - f_lo]) / span, 0, 1)
            probes = [lo + (hi - lo) * float(v) for v in fr]
        else:  # interpolation stalled (a kink or a tie in the slope distribution): bisect
            probes = [0.5 * (lo + hi)]
        for s in probes:
            if not lo < s < hi:
                continue
            f = pts.below(s)
            if f <= k_min:
                lo, f_lo = s, f
            elif f > k_max:
                hi, f_hi = s, f
        if hi - lo <= 1e-12 * max(abs(lo), abs(hi)) + pts.resolution:
            break
        interpolate = (f_hi - f_lo) < span // 4
    return lo, hi, f_lo, f_hi


def sen_slope(x: npt.ArrayLike, y: npt.ArrayLike, *, seed: int = 0) -> SenSlope:
    """Exact Theil-Sen slope of ``y: [n]`` against ``x: [n]`` (median over distinct-x pairs).

    For an even number of pairs the two middle slopes are averaged (as ``numpy.median``).
    Raises :class:`SeriesError` for bad input or when no two x differ.
    """
    xs = as_series(x, "x")
    ys = as_series(y, "y")
    n_pairs = _Points(xs, ys).n_pairs if xs.shape == ys.shape else 0
    if n_pairs == 0:
        raise SeriesError("no pair of samples has distinct x; the slope is undefined")
    mid = (n_pairs - 1) // 2
    ranks = [mid] if n_pairs % 2 == 1 else [mid, mid + 1]
    slope = float(np.mean(pairwise_slope_order_stats(xs, ys, ranks, seed=seed)))
    return SenSlope(slope=slope, intercept=float(np.median(ys - slope * xs)), n_pairs=n_pairs)


def sen_slope_ci(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    var_s: float,
    confidence: float = 0.95,
    *,
    seed: int = 0,
) -> tuple[float, float]:
    """Order-statistic interval of the Theil-Sen slope from a (corrected) Var S.

    With C = z_{(1+confidence)/2} * sqrt(var_s) and N pairs, the bounds are the
    ((N - C)/2)-th and ((N + C)/2 + 1)-th smallest pairwise slopes (1-based, rounded
    outwards, clipped to [1, N]) - Sen (1968) with the variance of S passed in, so an
    autocorrelation-corrected variance widens the interval. Raises :class:`SeriesError`.
    """
    if not 0.0 < confidence < 1.0 or not var_s > 0.0 or not math.isfinite(var_s):
        raise SeriesError(
            f"need 0 < confidence < 1 and finite var_s > 0, got {confidence}, {var_s}"
        )
    xs = as_series(x, "x")
    ys = as_series(y, "y")
    n_pairs = _Points(xs, ys).n_pairs if xs.shape == ys.shape else 0
    if n_pairs == 0:
        raise SeriesError("no pair of samples has distinct x; the slope is undefined")
    c = float(norm.ppf(0.5 + confidence / 2.0)) * math.sqrt(var_s)
    low_rank = min(max(math.floor((n_pairs - c) / 2.0), 1), n_pairs)
    high_rank = min(max(math.ceil((n_pairs + c) / 2.0) + 1, 1), n_pairs)
    low, high = pairwise_slope_order_stats(xs, ys, [low_rank - 1, high_rank - 1], seed=seed)
    return float(low), float(high)
