"""Fitting the parametric trace generator to a recorded RL routing trace.

Protocol
--------
:func:`fit_trace_params` searches :class:`~llmsys.moe.tracegen.TraceParams`'s skew
(``zipf_exponent``) and per-sequence concentration (``topic_concentration``,
``mixture_alpha``) on a grid, by simulated moments: for each candidate it draws traces of
the recorded run's own shape (steps, micro-steps, sequences per micro-step, tokens per
sequence, GRPO group size; ``seeds`` draws) and compares their
:func:`~llmsys.moe.trace_stats.premise_stats` to the recorded trace's. The distance is the
sum of squared log-ratios of ``cv_across_steps``, ``cv_across_microsteps`` and
``imbalance_no_balancing_mean - 1`` (the part above perfect balance). The best grid point
wins; the grid and its distances come back for inspection.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np

from llmsys.core.errors import InputError
from llmsys.moe.trace_stats import PremiseStats, premise_stats
from llmsys.moe.tracegen import RoutingTrace, TraceParams, generate_trace

ZIPF_GRID = (0.1, 0.3, 0.5, 0.8, 1.1)
TOPIC_CONCENTRATION_GRID = (0.05, 0.1, 0.25, 0.5, 1.0)
MIXTURE_ALPHA_GRID = (0.03, 0.1, 0.3, 1.0)


@dataclass(frozen=True, slots=True)
class FitResult:
    """Best generator parameters and how well they match."""

    params: TraceParams
    """Fitted parameters (shape knobs set to the recorded run's)."""
    target: PremiseStats
    """Statistics of the recorded trace."""
    fitted: PremiseStats
    """Statistics of a trace drawn with the fitted parameters (first seed)."""
    distance: float
    """Moment distance of the best point (mean over seeds)."""
    grid: list[tuple[float, float, float, float]]
    """Every ``(zipf_exponent, topic_concentration, mixture_alpha, distance)`` tried."""


def _moments(s: PremiseStats) -> np.ndarray:
    return np.log(
        [
            max(s.cv_across_steps, 1e-9),
            max(s.cv_across_microsteps, 1e-9),
            max(s.imbalance_no_balancing_mean - 1.0, 1e-9),
        ]
    )


def fit_trace_params(
    trace: RoutingTrace,
    seqs_per_micro: int,
    group_size: int,
    gpus: int = 8,
    seeds: int = 2,
) -> FitResult:
    """Fit the generator to ``trace`` (see the module docstring).

    Raises:
        InputError: ``seqs_per_micro``, ``group_size`` or ``seeds`` is not positive, or the
            trace is too short for premise statistics.
    """
    if seqs_per_micro < 1 or group_size < 1 or seeds < 1:
        raise InputError("seqs_per_micro, group_size and seeds must be >= 1")
    target = premise_stats(trace, gpus=gpus, seqs_per_micro=seqs_per_micro)
    want = _moments(target)
    steps, _, micro = trace.loads.shape[:3]
    base = TraceParams(
        steps=steps,
        micro_steps=micro,
        dp_ranks=1,
        sequences_per_rank=seqs_per_micro,
        seq_len_tokens=max(1, trace.tokens_per_micro // seqs_per_micro),
        responses_per_prompt=group_size,
    )
    grid: list[tuple[float, float, float, float]] = []
    best: tuple[float, TraceParams] | None = None
    for zipf, conc, alpha in itertools.product(
        ZIPF_GRID, TOPIC_CONCENTRATION_GRID, MIXTURE_ALPHA_GRID
    ):
        cand = replace(base, zipf_exponent=zipf, topic_concentration=conc, mixture_alpha=alpha)
        dist = 0.0
        for seed in range(seeds):
            got = premise_stats(generate_trace(trace.shape, replace(cand, seed=seed)), gpus=gpus)
            dist += float(((_moments(got) - want) ** 2).sum())
        dist /= seeds
        grid.append((zipf, conc, alpha, dist))
        if best is None or dist < best[0]:
            best = (dist, cand)
    assert best is not None
    fitted = premise_stats(generate_trace(trace.shape, best[1]), gpus=gpus)
    return FitResult(best[1], target, fitted, best[0] if math.isfinite(best[0]) else math.inf, grid)
