"""Campaign config: TOML round trip, unknown keys and out-of-range values are errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmsys.aging.campaign_config import (
    CampaignConfig,
    CampaignConfigError,
    load_campaign_config,
)
from llmsys.aging.deployments import DeploymentKind
from llmsys.aging.loadgen import ArrivalProcess
from llmsys.aging.multiple_testing import Correction
from llmsys.aging.options import TrendMethod

TOML = """
name = "c1"
duration_s = 120
control = "ctl"
[sampling]
interval_s = 0.5
detail_interval_s = 2.0
[stress]
arrival = "gamma"
rate_rps = 4
gamma_shape = 0.5
[analysis]
metrics = ["rss_bytes", "pss_bytes"]
alpha = 0.01
correction = "holm"
method = "hamed-rao"
[[deployments]]
name = "leak"
kind = "injector"
config = { kind = "per-token", leak_bytes = 4096 }
[[deployments]]
name = "ctl"
kind = "injector"
config = { kind = "control" }
"""


def _base() -> dict[str, Any]:
    return {
        "name": "c",
        "duration_s": 10,
        "control": "b",
        "deployments": [
            {"name": "a", "kind": "injector", "config": {"kind": "per-request"}},
            {"name": "b", "kind": "injector"},
        ],
    }


def test_toml_is_read_into_typed_fields_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(TOML)
    cfg = load_campaign_config(path)
    assert cfg.stress.arrival is ArrivalProcess.GAMMA
    assert cfg.analysis.correction is Correction.HOLM
    assert cfg.analysis.method is TrendMethod.HAMED_RAO
    assert cfg.analysis.metrics == ("rss_bytes", "pss_bytes")
    assert cfg.deployments[0].kind is DeploymentKind.INJECTOR
    assert cfg.sampling.monitor_config().fsync_interval_s == 0.5  # durable per interval
    assert CampaignConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ((), {"colour": "red"}, "unknown key"),
        (("sampling",), {"interval": 1}, "unknown key"),
        (("stress",), {"rps": 1}, "unknown key"),
        (("analysis",), {"metric": ["rss_bytes"]}, "unknown key"),
        (("analysis",), {"metrics": ["heap_bytes"]}, "unknown metric"),
        (("analysis",), {"alpha": 1.5}, "alpha"),
        (("analysis",), {"correction": "bonferroni"}, "invalid"),
        (("sampling",), {"interval_s": 1.0, "detail_interval_s": 1.5}, "multiple"),
        (("stress",), {"rate_rps": 0}, "rate_rps"),
        ((), {"control": "zzz"}, "control"),
        ((), {"duration_s": 0}, "duration_s"),
    ],
)
def test_bad_configs_are_rejected_with_a_named_problem(
    path: tuple[str, ...], value: dict[str, Any], message: str
) -> None:
    values = _base()
    table = values
    for key in path:
        table = table.setdefault(key, {})
    table.update(value)
    with pytest.raises(CampaignConfigError, match=message):
        CampaignConfig.from_dict(values)


def test_deployment_problems_are_caught_before_anything_starts() -> None:
    values = _base()
    values["deployments"][0]["config"] = {"kind": "per-request", "leak_byte": 1}
    with pytest.raises(CampaignConfigError, match="leak_byte"):
        CampaignConfig.from_dict(values)
    values = _base()
    values["deployments"][1]["name"] = "a"
    with pytest.raises(CampaignConfigError, match="unique"):
        CampaignConfig.from_dict(values)
    values = _base()
    values["deployments"][0]["kind"] = "vllm"
    with pytest.raises(CampaignConfigError, match="unknown deployment kind"):
        CampaignConfig.from_dict(values)
    values = _base()
    values["deployments"][0]["colour"] = 1
    with pytest.raises(CampaignConfigError, match="unknown key"):
        CampaignConfig.from_dict(values)


def test_missing_file_and_bad_toml_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CampaignConfigError, match="cannot read"):
        load_campaign_config(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(CampaignConfigError, match=r"bad\.toml"):
        load_campaign_config(bad)
    (tmp_path / "missing.toml").write_text('name = "x"\n')
    with pytest.raises(CampaignConfigError, match="missing"):
        load_campaign_config(tmp_path / "missing.toml")
