"""Trace generator, npz round trip, simulator and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmsys.cli.main import main
from llmsys.core.errors import ConfigError, InputError
from llmsys.moe import (
    QWEN3_30B_A3B,
    ModelShape,
    Policy,
    SimConfig,
    Topology,
    TraceParams,
    generate_trace,
    load_profile,
    load_trace,
    simulate,
)

SMALL = ModelShape("tiny", 4, 16, 2, 256, 128)


def small_trace(steps: int = 2) -> object:
    return generate_trace(
        SMALL, TraceParams(steps=steps, micro_steps=4, dp_ranks=8, seq_len_tokens=256)
    )


def test_trace_counts_every_route_and_round_trips(tmp_path: Path) -> None:
    trace = small_trace()
    # each micro-step routes tokens x top_k per layer, recompute and update are equal
    per_layer = trace.loads.sum(axis=-1)
    assert (per_layer == trace.tokens_per_micro * SMALL.top_k).all()
    assert (trace.loads[:, 0] == trace.loads[:, 1]).all()
    path = tmp_path / "t.npz"
    trace.save(path)
    back = load_trace(path)
    assert (back.loads == trace.loads).all() and back.shape == SMALL


def test_trace_is_skewed_and_micro_steps_vary() -> None:
    trace = generate_trace(
        QWEN3_30B_A3B, TraceParams(steps=1, micro_steps=4, dp_ranks=16, responses_per_prompt=4)
    )
    loads = trace.loads[0, 1].astype(float)
    share = loads / loads.sum(-1, keepdims=True)
    assert (loads.max(-1) / loads.mean(-1)).mean() > 2.0  # hot experts exist
    assert (share.std(0) / share.mean(0)).mean() > 0.05  # micro-steps differ


def test_bad_trace_file_raises(tmp_path: Path) -> None:
    bad = tmp_path / "x.npz"
    np.savez(bad, loads=np.zeros(3))
    with pytest.raises(InputError):
        load_trace(bad)


def test_simulator_orders_policies() -> None:
    trace = small_trace(steps=3)
    cfg = SimConfig(topology=Topology(2, 2, 6))
    policies = (Policy.STATIC, Policy.EPLB, Policy.REACTIVE, Policy.FOREMOE)
    res = {p: simulate(trace, p, cfg) for p in policies}
    static, ours = res[Policy.STATIC], res[Policy.FOREMOE]
    # reactive learns its loads when the router runs: its weight moves are exposed,
    # foremoe's are prefetched under the previous micro-step
    assert res[Policy.REACTIVE].exposed_transfer_s > ours.exposed_transfer_s
    assert ours.imbalance_mean < static.imbalance_mean
    assert ours.step_time_s < static.step_time_s
    # the ceiling bounds the speedup
    assert static.step_time_s / ours.step_time_s <= static.ceiling_vs() + 1e-9
    assert static.slots_moved_fraction == 0.0
    with pytest.raises(ConfigError):
        simulate(trace, Policy.MILP, cfg)


def test_profile_has_every_figure() -> None:
    hw = load_profile()
    assert hw.nvlink_bytes_per_s == pytest.approx(450e9)
    assert hw.ib_bytes_per_s == pytest.approx(50e9)


def test_cli_plan_json_and_previous(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    load = tmp_path / "load.npy"
    np.save(load, np.array([[800, 10, 10, 10, 10, 10, 10, 10], [5, 5, 5, 5, 5, 5, 5, 400]]))
    args = [
        "moe",
        "plan",
        "--load",
        str(load),
        "--nodes",
        "2",
        "--gpus-per-node",
        "2",
        "--slots-per-gpu",
        "3",
        "--json",
    ]
    assert main(args) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["policy"] == "foremoe" and len(obj["layers"]) == 2
    layer = obj["layers"][0]
    assert len(layer["slot_expert"]) == 12 and sum(layer["slot_tokens"]) == 870
    assert max(layer["gpu_tokens"]) <= 230
    prev = tmp_path / "prev.json"
    prev.write_text(json.dumps(obj))
    assert main([*args, "--previous", str(prev), "--policy", "eplb"]) == 0
    assert json.loads(capsys.readouterr().out)["policy"] == "eplb"


@pytest.mark.parametrize(
    "content", [np.array([[1.0, np.nan]]), np.array([[1, -1]]), np.ones((1, 13))]
)
def test_cli_plan_invalid_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: np.ndarray
) -> None:
    load = tmp_path / "load.npy"
    np.save(load, content)
    rc = main(
        [
            "moe",
            "plan",
            "--load",
            str(load),
            "--nodes",
            "1",
            "--gpus-per-node",
            "2",
            "--slots-per-gpu",
            "2",
            "--json",
        ]
    )
    assert rc == 2
    assert "llmsys: error:" in capsys.readouterr().err


def test_cli_plan_mismatched_previous_exits_2(tmp_path: Path) -> None:
    load = tmp_path / "load.npy"
    np.save(load, np.ones((1, 4), dtype=np.int64))
    prev = tmp_path / "prev.json"
    prev.write_text(json.dumps({"policy": "static", "layers": [{"slot_expert": [0, 1]}]}))
    rc = main(
        [
            "moe",
            "plan",
            "--load",
            str(load),
            "--nodes",
            "1",
            "--gpus-per-node",
            "2",
            "--slots-per-gpu",
            "2",
            "--previous",
            str(prev),
            "--json",
        ]
    )
    assert rc == 2


def test_cli_simulate_trace_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = generate_trace(
        QWEN3_30B_A3B, TraceParams(steps=2, micro_steps=2, dp_ranks=8, seq_len_tokens=512)
    )
    path = tmp_path / "t.npz"
    trace.save(path)
    assert main(["moe", "simulate", "--trace", str(path), "--policy", "eplb", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["simulated"] is True and out["policy"] == "eplb" and out["step_time_s"] > 0


def test_pack_homes_balances_and_keeps_a_good_layout() -> None:
    from llmsys.moe import pack_homes

    rng = np.random.default_rng(3)
    topo = Topology(2, 2, 3)
    load = rng.integers(0, 1000, size=(3, 8)).astype(float)
    load[:, 0] = 5000  # one hot expert per layer
    homes = pack_homes(load, topo)
    gpu = np.array([[load[i, homes.home_table[i, g]].sum() for g in range(4)] for i in range(3)])
    # LPT: the hot expert's GPU takes the coldest partner
    assert (gpu.max(axis=1) <= 5000 + load.min(axis=1) + 1e-9).all()
    again = pack_homes(load * 1.01, topo, previous=homes)
    assert (again.home_table == homes.home_table).all()  # nothing better: nothing moves


def test_demo_reports_simulated_figures(tmp_path: Path) -> None:
    from llmsys.moe.demo import run_demo

    lines = run_demo(tmp_path)
    assert "REAL GRPO" in lines[0]
    assert any("SIMULATED" in line for line in lines)
    record = json.loads((tmp_path / "moe_demo.json").read_text())
    assert record["static"]["speedup_of_foremoe"] > 1.5
    assert all(v["simulated"] for v in record.values())


def test_bad_configs_raise() -> None:
    from llmsys.moe import HomeLayout, home_layout

    with pytest.raises(ConfigError):
        Topology(0, 8, 3)
    layout = home_layout(Topology(1, 2, 2), 4)
    table = layout.home_table.copy()
    table[0, 0, 0] = table[0, 0, 1]  # expert listed twice, another missing
    with pytest.raises(ConfigError, match="exactly once"):
        HomeLayout(layout.topology, 4, table, layout.home_valid)


def test_profile_rejects_unknown_keys(tmp_path: Path) -> None:
    from llmsys.moe.simulator import DEFAULT_PROFILE

    bad = tmp_path / "hw.toml"
    bad.write_text(DEFAULT_PROFILE.read_text() + "\nmystery_gbps = 1.0\n")
    with pytest.raises(ConfigError, match="unknown"):
        load_profile(bad)
