"""Shared helpers of the probe tests: run injectors under load with the monitor watching."""

from __future__ import annotations

import csv
import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from llmsys.aging.deployments import DeploymentKind, DeploymentProcess, DeploymentSpec
from llmsys.aging.loadgen import LoadConfig, run_load
from llmsys.aging.monitor import Monitor, MonitorConfig, MonitorTarget

MIB = 1 << 20


def read_columns(path: Path) -> dict[str, np.ndarray]:
    """Read a monitor CSV into float arrays, NaN for empty cells."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows, f"{path} has no rows"
    return {
        name: np.array([float(r[name]) if r[name] != "" else np.nan for r in rows])
        for name in rows[0]
    }


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y on x over the rows where both are present."""
    ok = np.isfinite(x) & np.isfinite(y)
    assert ok.sum() >= 5, "too few paired samples for a slope"
    return float(np.polyfit(x[ok], y[ok], 1)[0])


def age_injectors(
    configs: dict[str, dict[str, Any]],
    out: Path,
    duration_s: float,
    rate_rps: float,
    output_tokens: int = 8,
) -> dict[str, Any]:
    """Start one injector per config, load each for ``duration_s``, monitor all at 1 Hz.

    Returns ``{"csv": {name: columns}, "debug": {name: /debug/engine state}}``.
    """
    deps = {
        name: DeploymentProcess(
            DeploymentSpec(name, DeploymentKind.INJECTOR, cfg), out / f"{name}.log"
        )
        for name, cfg in configs.items()
    }
    try:
        for dep in deps.values():
            dep.start()
        for dep in deps.values():
            dep.wait_ready(60)
        targets = [MonitorTarget(n, d.current_pid, d.metrics_url) for n, d in deps.items()]
        monitor = Monitor(targets, out / "monitor", MonitorConfig(detail_interval_s=2.0))
        with monitor:
            time.sleep(2.0)  # a leak-free baseline
            loads = [
                threading.Thread(
                    target=run_load,
                    args=(
                        LoadConfig(
                            url=dep.url,
                            rate_rps=rate_rps,
                            duration_s=duration_s,
                            seed=i,
                            output_tokens_median=output_tokens,
                            output_tokens_sigma=0.0,
                            prompt_words_sigma=0.5,
                        ),
                        out / f"load-{name}",
                    ),
                )
                for i, (name, dep) in enumerate(deps.items())
            ]
            for thread in loads:
                thread.start()
            for thread in loads:
                thread.join()
            time.sleep(2.0)
        debug = {n: get_json(d.url + "/debug/engine") for n, d in deps.items()}
    finally:
        for dep in deps.values():
            dep.stop()
    return {
        "csv": {n: read_columns(monitor.csv_path(n)) for n in deps},
        "debug": debug,
        "monitor_dir": out / "monitor",
    }
