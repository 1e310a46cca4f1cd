"""Recorded trace files: exact round trip, clear errors for truncated or edited files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from llmsys.core.errors import InputError
from llmsys.moe.lm.config import MoEConfig
from llmsys.moe.lm.grpo import RLConfig
from llmsys.moe.lm.model import MoELM
from llmsys.moe.lm.recorded import RecordedRun, load_recorded
from llmsys.moe.lm.rl import run_rl
from llmsys.moe.tracegen import load_trace

SMALL = MoEConfig(num_layers=2, hidden=32, num_heads=2, num_experts=8, top_k=2, expert_ffn=16)


@pytest.fixture(scope="module")
def run() -> RecordedRun:
    torch.manual_seed(0)
    cfg = RLConfig(
        steps=2, prompts_per_step=2, group_size=4, micro_batch_seqs=2, shots=1, max_new_tokens=3
    )
    return run_rl(MoELM(SMALL), cfg).run


def test_round_trip_is_exact(run: RecordedRun, tmp_path: Path) -> None:
    path = tmp_path / "t.npz"
    run.save(path)
    back = load_recorded(path)
    assert np.array_equal(back.trace.loads, run.trace.loads)
    for name in ("routes", "valid", "tokens", "rewards"):
        got, want = getattr(back, name), getattr(run, name)
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert (back.seqs_per_micro, back.group_size) == (run.seqs_per_micro, run.group_size)
    assert back.trace.shape == run.trace.shape
    # the planner-side reader reads the same file
    assert np.array_equal(load_trace(path).loads, run.trace.loads)


def test_truncated_file_is_a_clear_error(run: RecordedRun, tmp_path: Path) -> None:
    path = tmp_path / "t.npz"
    run.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a"):
        load_recorded(path)
    with pytest.raises(InputError):
        load_trace(path)


def test_edited_loads_are_detected(run: RecordedRun, tmp_path: Path) -> None:
    path = tmp_path / "t.npz"
    run.save(path)
    with np.load(path) as data:
        arrays = dict(data)
    arrays["loads"] = arrays["loads"].copy()
    for stage in (0, 1):
        edited = dict(arrays)
        edited["loads"] = arrays["loads"].copy()
        edited["loads"][0, stage, 0, 0, 0] += 1
        np.savez_compressed(path, **edited)
        with pytest.raises(InputError, match="do not match"):
            load_recorded(path)


def test_a_no_replay_run_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = RLConfig(
        steps=2,
        prompts_per_step=2,
        group_size=4,
        micro_batch_seqs=2,
        shots=1,
        max_new_tokens=3,
        lr=3e-3,
        replay=False,
    )
    run = run_rl(MoELM(SMALL), cfg).run
    assert not run.replayed
    path = tmp_path / "n.npz"
    run.save(path)
    back = load_recorded(path)
    assert not back.replayed and np.array_equal(back.trace.loads, run.trace.loads)


def test_missing_key_and_plain_trace_are_rejected(run: RecordedRun, tmp_path: Path) -> None:
    path = tmp_path / "plain.npz"
    run.trace.save(path)  # a loads-only trace has no per-token routes
    with pytest.raises(InputError):
        load_recorded(path)
    with pytest.raises(InputError):
        load_recorded(tmp_path / "absent.npz")


def test_shapes_are_validated(run: RecordedRun) -> None:
    with pytest.raises(InputError):
        RecordedRun(run.trace, run.routes[:, :, :, :1], run.valid, run.tokens, run.rewards, 2, 4)
    with pytest.raises(InputError):
        RecordedRun(run.trace, run.routes, run.valid, run.tokens, run.rewards, 3, 4)
    bad = run.routes.copy()
    bad[0, 0, 0, 0, 0] = 200
    with pytest.raises(InputError):
        RecordedRun(run.trace, bad, run.valid, run.tokens, run.rewards, 2, 4)
