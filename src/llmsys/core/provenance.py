"""Provenance recorded with every benchmark result: git SHA and a stable config hash."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any


def git_sha(repo_dir: Path | None = None) -> str | None:
    """Return the current commit's SHA (with ``-dirty`` if the tree has changes), or None.

    ``repo_dir`` defaults to the directory of this source file, so an installed-in-place
    checkout reports its own commit.
    """
    cwd = repo_dir if repo_dir is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    suffix = "-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else ""
    return sha.stdout.strip() + suffix


def config_hash(config: Any) -> str:
    """Return a short stable hash of a JSON-serialisable configuration."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
