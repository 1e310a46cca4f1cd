"""Lazy package exports: a package's public names import their submodule on first use.

Why: ``llmsys --help`` imported every subsystem to build its parser, and with it torch
(through the serving stack) and scipy.signal (through the aging statistics): 4.5 s before
any help appeared. A package that re-exports its submodules' names now declares them once,
as ordinary imports under ``if TYPE_CHECKING:`` (so type checkers and readers see them), and
ends with::

    __getattr__, __dir__ = lazy_exports(__name__, __file__)

:func:`lazy_exports` reads those ``from <module> import <names>`` statements from the
package's own source (only that block, with :mod:`ast`), and returns module-level
``__getattr__``/``__dir__`` functions (PEP 562) that import a name's submodule the first
time the name is looked up and cache it in the package's namespace. An export named like a
submodule (``mann_kendall`` the function, in ``mann_kendall`` the module) keeps the name, as
it did when the package imported it eagerly. ``__all__`` stays an
explicit list in the package; a name in ``__all__`` that no such import provides is an
error at import time, so the two cannot drift apart.
"""

from __future__ import annotations

import ast
import importlib
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _type_checking_imports(source: str) -> dict[str, tuple[str, str]]:
    """``{bound name: (module, name in module)}`` of the ``from M import N [as B]``
    statements under ``if TYPE_CHECKING:``."""
    found: dict[str, tuple[str, str]] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"):
            continue
        for stmt in node.body:
            if isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.level == 0:
                for alias in stmt.names:
                    found[alias.asname or alias.name] = (stmt.module, alias.name)
    return found


def lazy_exports(
    package: str, init_file: str
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return ``(__getattr__, __dir__)`` for ``package`` (see the module docstring).

    Raises:
        ImportError: a name in the package's ``__all__`` has no ``TYPE_CHECKING`` import.
    """
    module = sys.modules[package]
    where = _type_checking_imports(Path(init_file).read_text(encoding="utf-8"))
    missing = sorted(set(getattr(module, "__all__", ())) - set(where) - set(vars(module)))
    if missing:
        raise ImportError(f"{package}.__all__ names without a TYPE_CHECKING import: {missing}")

    class _LazyPackage(types.ModuleType):
        """Keeps an export whose name is also a submodule's (``llmsys.aging.sen_slope``, the
        function, in module ``llmsys.aging.sen_slope``): importing the submodule binds it
        on the package, which would hide the export; an eager re-export overwrote it."""

        def __setattr__(self, name: str, value: Any) -> None:
            if (
                isinstance(value, types.ModuleType)
                and name in where
                and value.__name__ == f"{package}.{name}"
            ):
                return
            super().__setattr__(name, value)

    module.__class__ = _LazyPackage

    def __getattr__(name: str) -> Any:
        source = where.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source[0]), source[1])
        setattr(module, name, value)  # later lookups skip this hook
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(module)) | set(where))

    return __getattr__, __dir__
