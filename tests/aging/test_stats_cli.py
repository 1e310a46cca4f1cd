"""The ``llmsys aging analyze`` contract: JSON shape, defaults, exit 2 on malformed input."""

import json
from pathlib import Path

import numpy as np
import pytest

from llmsys.aging import CsvFormatError, load_deployment_csv
from llmsys.cli.main import main

KEYS = {
    "p_value",
    "log10_p",
    "significant",
    "slope_per_h",
    "slope_ci_per_h",
    "growth",
    "tte_h",
    "method",
    "n",
}


def _write(path: Path, n: int = 400, leak_per_s: float = 2000.0, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = ["t,requests,tokens,rss_bytes,latency_ms"]
    for i in range(n):
        rss = 1e9 + leak_per_s * i * 5 + rng.normal(0, 2e4)
        lat = "" if i % 4 else f"{rng.normal(50, 3):.3f}"  # sampled 4x less often
        lines.append(f"{i * 5},{i * 3},{i * 600},{rss:.0f},{lat}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_single_file_json_contract(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = _write(tmp_path / "vllm.csv")
    assert main(["aging", "analyze", str(csv), "--json", "--capacity-bytes", "2e9"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) >= {"metrics", "family", "correction", "alpha"}
    assert doc["correction"] == "bh" and doc["alpha"] == 0.05
    assert doc["family"] == ["rss_bytes", "latency_ms"]
    rss, lat = doc["metrics"]["rss_bytes"], doc["metrics"]["latency_ms"]
    assert set(rss) >= KEYS and set(lat) >= KEYS
    assert rss["significant"] and rss["growth"] == "linear"
    assert rss["slope_per_h"] == pytest.approx(2000.0 * 3600, rel=0.01)
    low, high = rss["slope_ci_per_h"]
    assert low <= rss["slope_per_h"] <= high
    # 1 GB of room at 7.2 MB/h
    assert rss["tte_h"] == pytest.approx(1e9 / 7.2e6, rel=0.03)
    assert lat["n"] == 100 and not lat["significant"] and lat["tte_h"] is None


def test_several_files_keys_and_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _write(tmp_path / "a.csv", seed=1)
    b = _write(tmp_path / "b.csv", leak_per_s=0.0, seed=2)
    argv = [
        "aging",
        "analyze",
        str(a),
        str(b),
        "--json",
        "--correction",
        "holm",
        "--alternative",
        "two-sided",
        "--alpha",
        "0.01",
    ]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["family"] == ["a/rss_bytes", "a/latency_ms", "b/rss_bytes", "b/latency_ms"]
    assert doc["correction"] == "holm" and doc["alpha"] == 0.01
    assert doc["metrics"]["a/rss_bytes"]["significant"]
    assert not doc["metrics"]["b/rss_bytes"]["significant"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("x,rss\n1,2\n", "missing column 't'"),
        ("t,rss\n" + "".join(f"{i},{i}\n" for i in range(12)) + "12,abc\n", "line 14"),
        ("t,rss\n" + "".join(f"{i},{i}\n" for i in range(12)) + "11,5\n", "does not increase"),
        ("t,rss\n" + "".join(f"{i},{i if i < 5 else ''}\n" for i in range(20)), "5 samples"),
    ],
)
def test_malformed_input_exits_2_naming_file_and_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(body)
    assert main(["aging", "analyze", str(path), "--json"]) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and message in err
    with pytest.raises(CsvFormatError):
        load_deployment_csv(path)


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["aging", "analyze", str(tmp_path / "nope.csv"), "--json"]) == 2
    assert "nope.csv" in capsys.readouterr().err


def test_detrend_option_is_recorded_and_finds_an_early_full_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a 96 MiB cache full after 30 % of a 400 s run, AR(0.9) noise of ~1.2 MiB sd
    rng = np.random.default_rng(21)
    t = np.arange(400)
    noise = np.zeros(400)
    for i in range(1, 400):
        noise[i] = 0.9 * noise[i - 1] + rng.normal(0, 2**19)
    rss = np.round((5e8 + 96 * 2**20 * np.minimum(t / 120.0, 1.0) + noise) / 4096) * 4096
    csv = tmp_path / "cache.csv"
    csv.write_text("t,rss_bytes\n" + "".join(f"{a},{b:.0f}\n" for a, b in zip(t, rss, strict=True)))
    assert main(["aging", "analyze", str(csv), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["detrend"] == "line"
    assert main(["aging", "analyze", str(csv), "--json", "--detrend", "shape"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["detrend"] == "shape"
    cache = doc["metrics"]["rss_bytes"]
    assert cache["significant"] and cache["growth"] == "saturating" and cache["tte_h"] is None
