"""Compiled pair-counting kernels behind Mann-Kendall S and exact Theil-Sen selection.

Protocol: every statistic in :mod:`llmsys.aging` that looks at all n(n-1)/2 pairs goes
through one of three kernels, each a bottom-up merge sort in O(n log n):

- :func:`count_inversions` - for keys ``k: [n]`` (float64, finite), the number of pairs
  ``i < j`` with ``k[i] > k[j]`` (strictly) and the number of pairs with ``k[i] == k[j]``.
  With ``k = y`` this is Mann-Kendall's discordant count; with ``k = y - s x`` it counts
  pairwise slopes below ``s`` (lines ``y_i - s x_i`` cross before ``s``).
- :func:`mk_s_batch` - Mann-Kendall S for each row of ``[B, m]`` (bootstrap replicates).
- :func:`enumerate_crossings` - the slopes of the pairs whose order differs between two
  orderings (the pairwise slopes inside a bracket), written into a preallocated buffer.

Keys must be finite; callers validate (NaN compares false and would corrupt counts).
Kernels are compiled by numba on first use and cached next to this file.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_RUN = 32  # insertion-sort run length before merging: fewer passes over memory


@njit(cache=True, nogil=True)  # type: ignore[misc]
def _sort_count(keys: FloatArray) -> tuple[int, int]:  # pragma: no cover - compiled
    n = keys.shape[0]
    a = keys.copy()
    b = np.empty_like(a)
    inv = 0
    for start in range(0, n, _RUN):
        end = min(start + _RUN, n)
        for i in range(start + 1, end):
            v = a[i]
            j = i - 1
            while j >= start and a[j] > v:
                a[j + 1] = a[j]
                j -= 1
                inv += 1
            a[j + 1] = v
    width = _RUN
    while width < n:
        for lo in range(0, n, 2 * width):
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            i = lo
            j = mid
            k = lo
            while i < mid and j < hi:
                if a[i] <= a[j]:
                    b[k] = a[i]
                    i += 1
                else:
                    b[k] = a[j]
                    j += 1
                    inv += mid - i
                k += 1
            while i < mid:
                b[k] = a[i]
                i += 1
                k += 1
            while j < hi:
                b[k] = a[j]
                j += 1
                k += 1
        a, b = b, a
        width *= 2
    ties = 0
    run = 1
    for i in range(1, n):
        if a[i] == a[i - 1]:
            run += 1
        else:
            ties += run * (run - 1) // 2
            run = 1
    ties += run * (run - 1) // 2
    return inv, ties


@njit(cache=True, nogil=True)  # type: ignore[misc]
def _mk_s_rows(rows: FloatArray) -> IntArray:  # pragma: no cover - compiled
    count = rows.shape[0]
    m = rows.shape[1]
    out = np.empty(count, dtype=np.int64)
    total = m * (m - 1) // 2
    for r in range(count):
        inv, ties = _sort_count(rows[r])
        out[r] = total - ties - 2 * inv
    return out


@njit(cache=True, nogil=True)  # type: ignore[misc]
def _crossings(
    order_lo: IntArray, key_hi: FloatArray, x: FloatArray, y: FloatArray, out: FloatArray
) -> int:  # pragma: no cover - compiled
    n = order_lo.shape[0]
    idx = order_lo.copy()
    tmp = np.empty_like(idx)
    cap = out.shape[0]
    found = 0
    width = 1
    while width < n:
        for lo in range(0, n, 2 * width):
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            i = lo
            j = mid
            k = lo
            while i < mid and j < hi:
                if key_hi[idx[i]] <= key_hi[idx[j]]:
                    tmp[k] = idx[i]
                    i += 1
                else:
                    r = idx[j]
                    for q in range(i, mid):
                        if found < cap:
                            left = idx[q]
                            out[found] = (y[r] - y[left]) / (x[r] - x[left])
                        found += 1
                    tmp[k] = r
                    j += 1
                k += 1
            while i < mid:
                tmp[k] = idx[i]
                i += 1
                k += 1
            while j < hi:
                tmp[k] = idx[j]
                j += 1
                k += 1
        idx, tmp = tmp, idx
        width *= 2
    return found


def count_inversions(keys: FloatArray) -> tuple[int, int]:
    """Return ``(discordant, tied)`` pair counts of ``keys: [n]`` (finite float64).

    ``discordant`` is #{i < j : keys[i] > keys[j]}, ``tied`` is #{i < j : keys[i] == keys[j]}.
    O(n log n) time, O(n) extra memory.
    """
    arr = np.ascontiguousarray(keys, dtype=np.float64)
    if arr.shape[0] < 2:
        return 0, 0
    inv, ties = _sort_count(arr)
    return int(inv), int(ties)


def mk_s_batch(rows: FloatArray) -> IntArray:
    """Return Mann-Kendall S of each row of ``rows: [B, m]`` (finite float64) as ``[B]`` int64."""
    arr = np.ascontiguousarray(rows, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"rows must be 2-D [B, m], got shape {arr.shape}")
    if arr.shape[1] < 2:
        return np.zeros(arr.shape[0], dtype=np.int64)
    result: IntArray = _mk_s_rows(arr)
    return result


def enumerate_crossings(
    order_lo: IntArray, key_hi: FloatArray, x: FloatArray, y: FloatArray, capacity: int
) -> tuple[FloatArray, int]:
    """Slopes of pairs that precede each other in ``order_lo`` but not under ``key_hi``.

    ``order_lo: [n]`` is a permutation of point indices (the order of lines ``y - lo x``),
    ``key_hi: [n]`` the line values at ``hi``; ``x, y: [n]`` the points. Returns
    ``(slopes[:min(found, capacity)], found)``; ``found > capacity`` means the buffer was
    too small and only the first ``capacity`` slopes were written. O(n log n + found).
    """
    out = np.empty(max(int(capacity), 0), dtype=np.float64)
    found = int(
        _crossings(
            np.ascontiguousarray(order_lo, dtype=np.int64),
            np.ascontiguousarray(key_hi, dtype=np.float64),
            np.ascontiguousarray(x, dtype=np.float64),
            np.ascontiguousarray(y, dtype=np.float64),
            out,
        )
    )
    return out[: min(found, out.shape[0])], found
