"""The shipped checkpoint and trace: RL from the checkpoint learns, replay is exact."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from llmsys.moe.lm.checkpoint import SHIPPED_CHECKPOINT, checkpoint_metadata, load_model
from llmsys.moe.lm.grpo import RLConfig
from llmsys.moe.lm.recorded import SHIPPED_TRACE, load_recorded
from llmsys.moe.lm.rl import evaluate_reward, run_rl


def test_shipped_files_are_small_and_consistent() -> None:
    assert SHIPPED_CHECKPOINT.stat().st_size < 30 * 2**20
    assert SHIPPED_TRACE.stat().st_size < 10 * 2**20
    cfg = checkpoint_metadata(SHIPPED_CHECKPOINT)["config"]
    run = load_recorded()  # checks loads against per-token routes
    assert run.trace.shape == cfg.shape
    assert run.trace.loads.shape[:3] == (10, 2, 16)
    assert (run.trace.loads[:, 0] == run.trace.loads[:, 1]).all()


def test_recompute_matches_rollout_in_float64() -> None:
    model = load_model(dtype=torch.float64)
    cfg = RLConfig(steps=1, prompts_per_step=2, group_size=4)
    rec = run_rl(model, cfg).records[0]
    assert rec.route_mismatch == (0.0, 0.0)
    assert rec.logprob_max_abs_diff <= 1e-5


def test_short_rl_run_raises_mean_reward() -> None:
    cfg = RLConfig(steps=4, seed=0)
    model = load_model()
    before = evaluate_reward(model, cfg)
    run_rl(model, cfg)
    after = evaluate_reward(model, cfg)
    assert after > before


def test_trace_stats_cli_prints_the_premise_json() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llmsys", "moe", "trace-stats", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    last = json.loads(out.stdout.strip().splitlines()[-1])
    for key in (
        "cv_across_steps",
        "cv_across_microsteps",
        "premise_ratio",
        "imbalance_no_balancing_mean",
    ):
        assert key in last
    assert last["imbalance_no_balancing_mean"] > 1.0
