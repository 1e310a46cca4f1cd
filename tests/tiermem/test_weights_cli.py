"""``llmsys tiermem weights-bench``: the documented JSON line, and bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmsys.cli.main import main

KEYS = {
    "weights_stream_vs_resident", "weights_stream_vs_on_demand", "weights_stream_vs_accelerate",
    "resident_weight_bytes_peak", "window_weight_bytes", "logits_bitwise_equal", "git_sha",
    "config_hash",
}  # fmt: skip


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result: dict[str, object] = json.loads(last)
    return result


def test_weights_bench_prints_the_issue_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tiermem", "weights-bench", "--tier", "ssd", "--window", "2", "--prompt-tokens", "8",
            "--repeats", "1", "--no-accelerate", "--work-dir", str(tmp_path), "--json"]  # fmt: skip
    result = _run(argv, capsys)
    assert result.keys() >= KEYS
    assert result["weights_stream_vs_accelerate"] is None  # not measured
    assert result["logits_bitwise_equal"] is True and result["tier"] == "ssd"
    block = result["block_bytes"]
    assert isinstance(block, int) and result["resident_weight_bytes_peak"] == 2 * block
    assert result["on_demand_weight_bytes_peak"] == block


@pytest.mark.slow
def test_weights_bench_with_accelerate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["tiermem", "weights-bench", "--prompt-tokens", "16", "--repeats", "1",
            "--work-dir", str(tmp_path), "--json"]  # fmt: skip
    result = _run(argv, capsys)
    ratio = result["weights_stream_vs_accelerate"]
    assert isinstance(ratio, float) and ratio > 0
    assert result["logits_bitwise_equal"] is True


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tier", "nvme"], "unknown tier 'nvme'"),
        (["--tier", "dram"], "cxl or ssd"),
        (["--window", "0"], "window_layers must be >= 1"),
        (["--prompt-tokens", "0"], "prompt_tokens must be a positive int"),
    ],
)
def test_bad_input_exits_2(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tiermem", "weights-bench", *flags]) == 2
    assert message in capsys.readouterr().err
