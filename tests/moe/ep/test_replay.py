"""Replaying a recorded trace's update stage: the plan, and one short run on 2 ranks."""

from __future__ import annotations

import numpy as np
import pytest
from tests.moe.ep.workers import PRELOAD

from llmsys.core.errors import ConfigError
from llmsys.moe.ep.dist import DistConfig
from llmsys.moe.ep.replay import plan_replay, run_replay
from llmsys.moe.lm.recorded import RecordedRun
from llmsys.moe.placement import ReplicaCost
from llmsys.moe.tracegen import ModelShape, RoutingTrace, Stage


def tiny_run(seed: int = 0) -> RecordedRun:
    """2 steps x 4 micro-steps x 2 sequences of 6 tokens; experts 0-1 hot."""
    rng = np.random.default_rng(seed)
    shape = ModelShape("tiny", 2, 8, 2, 16, 12)
    steps, seqs, width = 2, 8, 6
    p = np.where(np.arange(8) < 2, 6.0, 1.0)
    routes = np.stack(
        [rng.choice(8, 2, replace=False, p=p / p.sum()) for _ in range(steps * seqs * width * 2)]
    ).reshape(steps, seqs, width, 2, 2)
    valid = rng.random((steps, seqs, width)) > 0.2
    valid[:, :, 0] = True
    loads = np.zeros((steps, 2, 4, 2, 8), dtype=np.int64)
    for s in range(steps):
        for m in range(4):
            picked = routes[s, 2 * m : 2 * m + 2][valid[s, 2 * m : 2 * m + 2]]
            for layer in range(2):
                loads[s, :, m, layer] = np.bincount(picked[:, layer].ravel(), minlength=8)
    trace = RoutingTrace(loads, (Stage.RECOMPUTE, Stage.UPDATE), shape, int(valid.sum() // 8))
    return RecordedRun(
        trace,
        routes.astype(np.uint8),
        valid,
        rng.integers(0, 256, (steps, seqs, width)).astype(np.int16),
        rng.random((steps, seqs)).astype(np.float32),
        seqs_per_micro=2,
        group_size=4,
    )


def test_plan_serves_every_micro_step_with_both_policies() -> None:
    run = tiny_run()
    plan = plan_replay(run, steps=2, redundant_slots=2)
    assert len(plan.minis) == 4 and [m["step"] for m in plan.minis] == [0, 0, 1, 1]
    for i, mini in enumerate(plan.minis):
        for j, item in enumerate(mini["items"]):
            load = run.trace.loads[i // 2, 1, (i % 2) * 2 + j]
            item["static"].check_against(load)
            item["foremoe"].check_against(load)
    assert max(it["foremoe"].imbalance().max() for m in plan.minis for it in m["items"]) < max(
        it["static"].imbalance().max() for m in plan.minis for it in m["items"]
    )
    with pytest.raises(ConfigError):
        plan_replay(run, steps=0, redundant_slots=2)


def test_plan_scales_widths_and_tokens_with_the_same_routes() -> None:
    run = tiny_run()
    base = plan_replay(run, steps=1, redundant_slots=2)
    plan = plan_replay(run, 1, 2, hidden=32, expert_ffn=40, tokens_scale=3)
    assert (plan.model["hidden"], plan.model["expert_ffn"]) == (32, 40)
    assert (plan.trace.shape.hidden, plan.trace.shape.expert_ffn) == (32, 40)
    assert plan.trace.tokens_per_micro == 3 * run.trace.tokens_per_micro
    np.testing.assert_array_equal(plan.trace.loads, 3 * run.trace.loads)
    for mini, mini0 in zip(plan.minis, base.minis, strict=True):
        for it, it0 in zip(mini["items"], mini0["items"], strict=True):
            # every sequence three times in a row: each rank keeps its own sequences
            np.testing.assert_array_equal(it["routes"], it0["routes"].repeat(3, axis=0))
            np.testing.assert_array_equal(it["adv"], it0["adv"].repeat(3))
            assert it["static"].slot_tokens.tolist() == (3 * it0["static"].slot_tokens).tolist()
            it["foremoe"].check_against(3 * it0["static"].expert_tokens())
    with pytest.raises(ConfigError):
        plan_replay(run, 1, 2, tokens_scale=0)
    with pytest.raises(ConfigError):
        plan_replay(run, 1, 2, hidden=30)  # not a multiple of the 4 heads


def test_plan_with_a_prohibitive_replica_cost_is_static() -> None:
    run = tiny_run()
    # a move cost far above any token count: no replica can pay for its weights (a group
    # cost alone need not be prohibitive: a rank with fewer busy experts has room for it)
    plan = plan_replay(run, 2, 2, cost=ReplicaCost(0.0, 1e9))
    for mini in plan.minis:
        for it in mini["items"]:
            assert it["foremoe"].slot_tokens.tolist() == it["static"].slot_tokens.tolist()
    free = plan_replay(run, 2, 2)
    assert any(
        it["foremoe"].slot_tokens.tolist() != it["static"].slot_tokens.tolist()
        for mini in free.minis
        for it in mini["items"]
    )


def test_run_replay_records_every_minibatch_on_both_ranks() -> None:
    plan = plan_replay(tiny_run(), steps=2, redundant_slots=2)
    cfg = DistConfig(preload=PRELOAD, world_size=2, timeout_s=60.0, job_timeout_s=240.0)
    results = run_replay(plan, 1, cfg)
    assert [r.paths for r in results] == [results[0].paths] * 2  # same plan everywhere
    for r in results:
        seen = sorted((rec["mini"], rec["policy"]) for rec in r.records)
        assert seen == sorted((i, p) for i in range(4) for p in ("static", "foremoe"))
        for rec in r.records:
            assert len(rec["micro_s"]) == 2 and rec["total_s"] >= sum(rec["micro_s"])
            assert rec["moves"] == 0 if rec["policy"] == "static" else rec["moves"] >= 0
        # the engine also moved replicas in the warm-up repeat, which is not recorded
        assert 2 * sum(rec["moves"] for rec in r.records) == sum(r.paths.values()) > 0
        assert r.primitives["flops"] > 0 and r.link.host_bytes_per_s > 0
    with pytest.raises(ConfigError):
        run_replay(plan, 1, DistConfig(preload=PRELOAD, world_size=3))
