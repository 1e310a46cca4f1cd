"""The aging demo end to end (about 100 s, so marked slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmsys.aging.demo import run_demo


@pytest.mark.slow
def test_demo_detects_the_leak_bounds_the_cache_and_clears_the_control(tmp_path: Path) -> None:
    lines = run_demo(tmp_path)
    assert lines[0].startswith("leak: DETECTED (linear)")
    error = float(lines[0].rsplit("error ", 1)[1].rstrip("%)"))
    assert error <= 10.0
    assert lines[1].startswith("cache: classified saturating -> verdict bounded")
    assert lines[2].startswith("control: no aging")
    assert (tmp_path / "aging-campaign" / "report" / "report.html").exists()
