"""Slow, obviously-correct O(n^2) references for the fast trend statistics (tests only).

Protocol: each function here restates a definition literally over all pairs, so the fast
paths in :mod:`llmsys.aging.mann_kendall` and :mod:`llmsys.aging.sen_slope` can be checked
against it. Memory is O(n^2): keep n below a few thousand.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def mann_kendall_s_reference(y: npt.ArrayLike) -> tuple[int, float]:
    """S and tie-corrected Var S of ``y: [n]`` by the pairwise definition."""
    arr = np.asarray(y, dtype=np.float64)
    n = arr.shape[0]
    i, j = np.triu_indices(n, 1)
    s = int(np.sum(np.sign(arr[j] - arr[i])))
    _, counts = np.unique(arr, return_counts=True)
    g = counts.astype(np.float64)
    var_s = (n * (n - 1.0) * (2.0 * n + 5.0) - float(np.sum(g * (g - 1) * (2 * g + 5)))) / 18.0
    return s, var_s


def pairwise_slopes_reference(x: npt.ArrayLike, y: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Sorted slopes of all pairs with distinct x, ``[n_pairs]``."""
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    i, j = np.triu_indices(xs.shape[0], 1)
    dx = xs[j] - xs[i]
    keep = dx != 0
    slopes: npt.NDArray[np.float64] = np.sort((ys[j] - ys[i])[keep] / dx[keep])
    return slopes


def sen_slope_reference(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Median of all pairwise slopes with distinct x."""
    return float(np.median(pairwise_slopes_reference(x, y)))
