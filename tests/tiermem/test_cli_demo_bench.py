"""``llmsys tiermem`` subcommands, the demo, and a CI-sized run of bench_tiers.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmsys.cli.main import main
from llmsys.tiermem.demo import run_demo

BENCH_KEYS = {
    "dram_get_vs_memcpy", "dram_put_vs_memcpy", "ssd_get_vs_raw_odirect",
    "ssd_put_vs_raw_odirect", "cxl_backend", "cxl_get_gb_per_s", "cxl_configured_gb_per_s",
    "redis_get_mib_per_s", "lookup_us_per_block", "git_sha", "config_hash",
}  # fmt: skip


def test_info_reports_each_tier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_server: tuple[str, int]
) -> None:
    host, port = redis_server
    assert main(["tiermem", "info", "--cache-dir", str(tmp_path), "--redis", f"{host}:{port}"]) == 0
    out = capsys.readouterr().out
    assert "cxl_backend" in out and "cache_dir_o_direct               True" in out
    assert "ssd_native_aio" in out
    assert "redis_reachable                  True" in out


def test_bad_user_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tiermem", "info", "--cache-dir", str(tmp_path / "nope")]) == 2
    assert main(["tiermem", "info", "--cache-dir", str(tmp_path), "--redis", "no-port"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_demo_restores_a_shared_prefix(tmp_path: Path) -> None:
    lines = run_demo(tmp_path)
    text = "\n".join(lines)
    assert "reuses 16/28 blocks" in text
    assert "bytes verified equal to A's: True" in text
    assert "metadata-only replay" in text


def test_bench_tiers_runs_and_prints_the_documented_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tiermem", "bench-tiers", "--", "--sizes-mib", "1", "--bytes-per-size-mib", "4",
            "--rounds", "1", "--lookup-blocks", "200", "--cache-dir", str(tmp_path),
            "--out", str(tmp_path / "bench.json")]  # fmt: skip
    assert main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert result.keys() >= BENCH_KEYS
    assert result["cxl_backend"] in ("emulated", "numa", "dax")
    assert result["dram_get_vs_memcpy"] > 0 and result["lookup_us_per_block"] > 0
    assert result["redis_get_mib_per_s"] is None or result["redis_get_mib_per_s"] > 0
    assert json.loads((tmp_path / "bench.json").read_text())["config_hash"] == result["config_hash"]


def test_describe_names_the_backends_it_picked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_server: tuple[str, int]
) -> None:
    host, port = redis_server
    argv = ["tiermem", "describe", "--block-bytes", "65536", "--dram-mib", "1", "--cxl-mib", "1",
            "--ssd-dir", str(tmp_path), "--ssd-mib", "1", "--redis", f"{host}:{port}"]  # fmt: skip
    assert main(argv) == 0
    tiers = json.loads(capsys.readouterr().out)["tiers"]
    assert [t["kind"] for t in tiers] == ["dram", "cxl", "ssd", "remote"]
    assert tiers[1]["backend"] in ("emulated", "numa", "dax")
    assert tiers[1]["configured_bandwidth_bytes_per_s"] > 0
    assert tiers[3]["available"] is True and tiers[3]["last_error"] is None
    assert all(t["capacity_blocks"] == 16 for t in tiers[:3])
