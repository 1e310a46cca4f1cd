"""``llmsys tiermem llamacpp-bench``: the issue's JSON keys, and bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)"
)

from llmsys.cli.main import main

KEYS = {
    "llamacpp_speedup_vs_disk_cache",
    "llamacpp_speedup_vs_ram_cache",
    "llamacpp_outputs_identical",
    "git_sha",
    "config_hash",
}


def test_bad_bench_arguments_exit_2() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["tiermem", "llamacpp-bench", "--", "--rounds", "0"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_llamacpp_bench_prints_the_issue_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # CI-sized: one session, two chat turns, no cache-less reference engine
    out = str(tmp_path / "r.json")
    argv = ["tiermem", "llamacpp-bench", "--", "--footprint-mib", "6", "--sessions", "1",
            "--max-new-tokens", "2", "--no-reference", "--out", out]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result.keys() >= KEYS
    assert result["llamacpp_outputs_identical"] is True
    assert result["requests"] >= 2
    configs = result["configs"]
    assert configs["llmsys"]["detail"]["stored_chunks"] >= 1
    # one session: the live context already holds each previous turn, so nothing beats it
    assert configs["llmsys"]["evaluated_tokens"] <= configs["disk"]["evaluated_tokens"]
    assert json.loads((tmp_path / "r.json").read_text())["config_hash"] == result["config_hash"]
