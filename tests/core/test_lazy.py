"""Lazy package exports, and what that buys: a CLI that starts without torch or scipy."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from llmsys.core.lazy import lazy_exports

INIT = """
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from json import dumps, loads as parse
    from os.path import join

__all__ = ["dumps", "join", "parse"]
"""


def _package(tmp_path: Path, source: str, name: str) -> types.ModuleType:
    path = tmp_path / "__init__.py"
    path.write_text(source)
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module


def test_names_load_on_first_use_and_are_cached(tmp_path: Path) -> None:
    pkg = _package(tmp_path, INIT, "lazy_test_pkg")
    try:
        getattr_, dir_ = lazy_exports("lazy_test_pkg", pkg.__file__ or "")
        assert "dumps" not in vars(pkg)
        import json

        assert getattr_("dumps") is json.dumps and getattr_("parse") is json.loads
        assert vars(pkg)["dumps"] is json.dumps  # cached: the hook is not called again
        assert {"dumps", "join", "parse"} <= set(dir_())
        with pytest.raises(AttributeError, match="no attribute 'nope'"):
            getattr_("nope")
    finally:
        del sys.modules["lazy_test_pkg"]


def test_all_names_without_an_import_are_an_error(tmp_path: Path) -> None:
    pkg = _package(tmp_path, INIT.replace('"parse"]', '"parse", "ghost"]'), "lazy_test_bad")
    try:
        with pytest.raises(ImportError, match="ghost"):
            lazy_exports("lazy_test_bad", pkg.__file__ or "")
    finally:
        del sys.modules["lazy_test_bad"]


def test_building_the_cli_parser_imports_neither_torch_nor_scipy() -> None:
    probe = (
        "import sys\n"
        "from llmsys.cli.main import build_parser\n"
        "build_parser()\n"
        "print(sorted(m for m in ('torch', 'scipy.signal', 'scipy.stats', 'transformers') "
        "if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_an_export_named_like_its_submodule_keeps_the_name() -> None:
    probe = (
        "import llmsys.aging as a, llmsys.aging.trend\n"  # imports the submodules first
        "print(callable(a.mann_kendall), callable(a.sen_slope), a.mann_kendall.__module__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["True", "True", "llmsys.aging.mann_kendall"]
