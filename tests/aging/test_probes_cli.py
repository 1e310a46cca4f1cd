"""``llmsys aging serve | monitor | load``: a hand-started injector, watched and loaded."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from probe_helpers import MIB, read_columns

from llmsys.aging.deployments import free_port
from llmsys.cli.main import main

BOOT = "import sys; from llmsys.cli.main import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                BOOT,
                "aging",
                "serve",
                "injector",
                "--port",
                str(port),
                "--config",
                '{"kind": "per-request"}',
                "--set",
                "leak_bytes=2097152",
            ],
            stdout=sink,
            stderr=sink,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "serve never became ready"
                time.sleep(0.2)
        yield proc.pid, url
    finally:
        proc.terminate()
        proc.wait(10)


def test_monitor_and_load_commands(
    served: tuple[int, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import threading

    pid, url = served
    out = tmp_path / "mon"
    args = [
        "aging",
        "monitor",
        str(pid),
        "--out",
        str(out),
        "--duration-s",
        "4",
        "--detail-interval-s",
        "1",
        "--metrics-url",
        f"{pid}={url}/metrics",
    ]
    codes: list[int] = []
    mon = threading.Thread(target=lambda: codes.append(main(args)))
    mon.start()
    time.sleep(0.5)
    assert (
        main(
            [
                "aging",
                "load",
                url,
                "--rate",
                "10",
                "--duration",
                "2",
                "--seed",
                "1",
                "--output-tokens",
                "4",
                "--out",
                str(tmp_path / "load"),
            ]
        )
        == 0
    )
    mon.join()
    assert codes == [0]
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert summary["requests_ok"] >= 5 and summary["requests_error"] == 0
    c = read_columns(out / f"pid{pid}.csv")
    n = np.nanmax(c["requests"])
    assert n == summary["requests_ok"]
    # the --set override reached the server: 2 MiB per request
    growth = np.nanmax(c["rss_bytes"]) - np.nanmin(c["rss_bytes"])
    assert growth == pytest.approx(2 * MIB * n, rel=0.10)
    assert (tmp_path / "load" / "requests.jsonl").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["aging", "serve", "injector", "--config", "{not json"],
        ["aging", "serve", "injector", "--set", "no_such_key=1"],
        ["aging", "serve", "injector", "--set", "kind=nonsense"],
        ["aging", "serve", "injector", "--set", "novalue"],
        ["aging", "monitor", "1", "--out", "x", "--metrics-url", "nourl"],
        ["aging", "monitor", "1", "--out", "x", "--interval-s", "1", "--detail-interval-s", "1.5"],
        ["aging", "load", "ftp://host", "--duration", "1"],
    ],
)
def test_bad_input_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "llmsys: error:" in capsys.readouterr().err
