"""Premise statistics and the generator fit."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from llmsys.core.errors import InputError
from llmsys.moe.trace_stats import gpu_imbalance, plot_premise, premise_stats
from llmsys.moe.tracefit import fit_trace_params
from llmsys.moe.tracegen import ModelShape, RoutingTrace, Stage, TraceParams, generate_trace

SHAPE = ModelShape("t", 2, 16, 2, 8, 8)


def _trace(loads: np.ndarray) -> RoutingTrace:
    both = np.repeat(loads[:, None], 2, axis=1).astype(np.int64)
    return RoutingTrace(both, (Stage.RECOMPUTE, Stage.UPDATE), SHAPE, 100)


def test_identical_micro_steps_have_zero_micro_cv() -> None:
    rng = np.random.default_rng(0)
    per_step = rng.integers(1, 50, size=(3, 1, 2, 16))
    stats = premise_stats(_trace(np.repeat(per_step, 4, axis=1)))
    assert stats.cv_across_microsteps == pytest.approx(0.0)
    assert stats.cv_across_steps > 0


def test_imbalance_is_max_over_mean_gpu_load() -> None:
    loads = np.zeros(16)
    loads[:2] = 10  # GPU 0 holds experts 0 and 1 with 8 GPUs
    loads[2:] = 1
    # GPU loads: 20, then seven GPUs of 2 -> mean 34/8
    assert gpu_imbalance(loads, 8) == pytest.approx(20 / (34 / 8))
    with pytest.raises(InputError):
        gpu_imbalance(loads, 5)


def test_bigger_micro_batches_average_out() -> None:
    t = generate_trace(
        SHAPE,
        TraceParams(
            steps=2,
            micro_steps=16,
            dp_ranks=1,
            sequences_per_rank=1,
            seq_len_tokens=50,
            responses_per_prompt=1,
        ),
    )
    stats = premise_stats(t)
    sizes = sorted(stats.imbalance_by_micro_seqs)
    assert stats.imbalance_by_micro_seqs[sizes[-1]] < stats.imbalance_by_micro_seqs[sizes[0]]


def test_too_short_traces_are_rejected() -> None:
    with pytest.raises(InputError):
        premise_stats(_trace(np.ones((1, 4, 2, 16))))


def test_fit_recovers_a_generated_trace(tmp_path: Path) -> None:
    truth = TraceParams(
        steps=4,
        micro_steps=16,
        dp_ranks=1,
        sequences_per_rank=4,
        seq_len_tokens=50,
        responses_per_prompt=8,
        zipf_exponent=0.8,
        topic_concentration=0.1,
        mixture_alpha=0.1,
        seed=7,
    )
    trace = generate_trace(SHAPE, truth)
    fit = fit_trace_params(trace, seqs_per_micro=4, group_size=8, seeds=2)
    # the moments of the fitted generator are close to the trace's
    assert fit.fitted.cv_across_microsteps == pytest.approx(
        fit.target.cv_across_microsteps, rel=0.25
    )
    assert fit.fitted.cv_across_steps == pytest.approx(fit.target.cv_across_steps, rel=0.35)
    assert fit.distance < 0.2
    assert plot_premise(trace, fit.target, tmp_path / "p.png").stat().st_size > 10_000
    with pytest.raises(InputError):
        fit_trace_params(trace, seqs_per_micro=0, group_size=8)
    assert replace(fit.params, seed=0).sequences_per_rank == 4
