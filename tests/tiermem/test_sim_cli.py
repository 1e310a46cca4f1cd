"""``llmsys tiermem simulate`` end to end, and the calibration fit on a known machine."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from llmsys.cli.main import main
from llmsys.tiermem.sim import calibrate_profile, load_profile, requests_from_trace, simulate
from llmsys.tiermem.sim.calibrate import MachineMeasurements

from .test_sim_replay import _trace

REQUIRED = {
    "simulated",
    "profile",
    "throughput_rps",
    "speedup_itme_vs_cpu_offload",
    "speedup_unbounded_vs_cpu_offload",
}


def test_simulate_prints_labelled_figures_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = _trace(tmp_path)
    argv = ["tiermem", "simulate", "--trace", str(trace), "--profile", "h100-cmm", "--json"]
    assert main([*argv, "--ratios", "1,2,4"]) == 0
    out = capsys.readouterr().out
    assert "SIMULATED" in out and "simulated ratio 4: itme vs cpu-offload" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert set(summary) >= REQUIRED
    assert summary["simulated"] is True and summary["profile"] == "h100-cmm"
    assert set(summary["throughput_rps"]) == {
        "recompute", "cpu-offload", "dram-ssd", "itme", "unbounded"
    }  # fmt: skip
    assert set(summary["throughput_rps"]["itme"]) == {"1", "2", "4"}
    assert summary["speedup_itme_vs_cpu_offload"] == pytest.approx(
        summary["throughput_rps"]["itme"]["4"] / summary["throughput_rps"]["cpu-offload"]["4"]
    )
    assert "calibration_error_max" not in summary  # h100-cmm is not calibrated


@pytest.mark.skipif(
    not (Path(__file__).parents[2] / "src/llmsys/tiermem/sim/profiles/this-machine.toml").is_file(),
    reason="this-machine not calibrated in this checkout",
)
def test_this_machine_reports_its_calibration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = _trace(tmp_path, sessions=3, turns=2)
    argv = ["tiermem", "simulate", "--trace", str(trace), "--profile", "this-machine"]
    assert main([*argv, "--ratios", "2,4", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= summary["calibration_error_max"] < 10
    assert summary["profile"] == "this-machine"


def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = _trace(tmp_path)
    base = ["tiermem", "simulate", "--trace", str(trace)]
    assert main([*base, "--profile", "no-such-profile"]) == 2
    assert main([*base, "--profile", "h100-cmm", "--configs", "magic"]) == 2
    assert main([*base, "--profile", "h100-cmm", "--ratios", "0"]) == 2
    missing = ["tiermem", "simulate", "--trace", str(tmp_path / "nope.jsonl")]
    assert main([*missing, "--profile", "h100-cmm"]) == 2
    err = capsys.readouterr().err
    assert "no-such-profile" in err and "nope.jsonl" in err


def test_calibration_recovers_a_known_machine(tmp_path: Path) -> None:
    # "serving runs" simulated with a known profile; the fit sees ratios 1, 2 only and must
    # predict 4 and 8 closely, starting from measurements that are off by 2x in overhead
    truth = dataclasses.replace(
        load_profile("h100-cmm"), name="truth", async_saves=False, request_overhead_s=0.05
    )
    reqs = requests_from_trace(_trace(tmp_path, sessions=4, turns=3), truth)
    measured = simulate(reqs, truth, ratios=(1, 2, 4, 8)).summary()
    m = MachineMeasurements(
        kv_bytes_per_token=truth.kv_bytes_per_token,
        block_tokens=truth.block_tokens,
        prefill_chunk_blocks=truth.prefill_chunk_blocks,
        prefill_pass_s=truth.prefill_pass_s,
        prefill_token_s=truth.prefill_token_s,
        prefill_pair_s=truth.prefill_pair_s,
        decode_token_s=truth.decode_token_s,
        decode_context_token_s=truth.decode_context_token_s,
        load_block_overhead_s=0.0,
        save_block_overhead_s=0.0,
        tiers=truth.tiers,
    )
    profile = calibrate_profile(m, measured, reqs, source="synthetic")
    assert profile.calibration is not None
    assert set(profile.calibration.errors) == {"cpu-offload", "dram-ssd", "itme"}
    assert set(profile.calibration.errors["itme"]) == {"4", "8"}
    assert profile.calibration.error_max < 0.02
    assert profile.request_overhead_s == pytest.approx(0.05, rel=0.1)
