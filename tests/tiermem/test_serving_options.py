"""Bad serving-bench input gets a clear error (and exit 2 from the CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmsys.cli.main import main
from llmsys.core.errors import ConfigError
from llmsys.tiermem.serving import CacheConfig, ServingBenchOptions, Workload
from llmsys.tiermem.serving.compare import parse_configs


def test_parse_configs_names_the_known_ones() -> None:
    assert parse_configs("itme, cpu-offload") == [CacheConfig.ITME, CacheConfig.CPU_OFFLOAD]
    with pytest.raises(ValueError, match="known: recompute, cpu-offload"):
        parse_configs("itme,lmcache")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"workload": Workload.TRACE}, "trace file"),
        ({"ratios": (4, 0)}, "ratios"),
        ({"block_tokens": 0}, "block_tokens"),
        ({"lookahead": 0}, "lookahead"),
        ({"device": "tpu"}, "device"),
        ({"footprint_mib": 0.0}, "footprint"),
    ],
)
def test_options_validate(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ServingBenchOptions(**kwargs)  # type: ignore[arg-type]


def test_cli_bad_config_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["tiermem", "bench", "--configs", "itme,nope"]) == 2
    assert "unknown configuration 'nope'" in capsys.readouterr().err
    assert main(["tiermem", "bench", "--workload", "trace"]) == 2
    assert "--trace FILE" in capsys.readouterr().err
