"""The ``llmsys`` entry point: help, doctor, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmsys.cli.main import main

DOCTOR_KEYS = {
    "cores",
    "memory_bytes",
    "torch_version",
    "torch_device",
    "numa_nodes",
    "cpuless_numa_nodes",
    "dax_devices",
    "o_direct_ok",
    "gpus",
    "redis_server",
    "llama_cpp_server",
}


def test_help_exits_zero_and_lists_systems() -> None:
    out = subprocess.run([sys.executable, "-m", "llmsys", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for name in ("tiermem", "moe", "aging", "demo", "doctor"):
        assert name in out.stdout


def test_console_script_help() -> None:
    exe = Path(sys.executable).parent / "llmsys"
    if not exe.exists():
        pytest.skip("console script not installed (run make test, which installs it)")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert out.returncode == 0


def test_doctor_json_has_documented_keys(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llmsys", "doctor", "--json", "--cache-dir", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report.keys() >= DOCTOR_KEYS
    import os

    assert report["cores"] == len(os.sched_getaffinity(0))
    assert report["memory_bytes"] > 1 << 30
    assert report["torch_device"] in ("cpu", "cuda")
    assert isinstance(report["o_direct_ok"], bool)
    assert set(report["cpuless_numa_nodes"]) <= {n["node_id"] for n in report["numa_nodes"]}


def test_unknown_subcommand_is_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
