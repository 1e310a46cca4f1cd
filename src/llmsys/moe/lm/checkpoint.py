"""Saving and loading :class:`~llmsys.moe.lm.model.MoELM` checkpoints (safetensors).

Protocol
--------
A checkpoint is one safetensors file: every parameter in bfloat16 (the shipped one is
about 13 MB) plus string metadata ``config`` (the :class:`MoEConfig` as JSON),
``format_version`` and free-form ``provenance`` JSON (training settings, git sha, corpus
sizes). :func:`load_model` rebuilds the model in the dtype asked for (float32 for training
and RL, float64 for exactness tests). The shipped checkpoint lives in the package
(:data:`SHIPPED_CHECKPOINT`), so tests and demos never retrain.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from llmsys.core.errors import InputError
from llmsys.moe.lm.config import MoEConfig
from llmsys.moe.lm.model import MoELM

CHECKPOINT_FORMAT_VERSION = "1"
SHIPPED_CHECKPOINT = Path(__file__).resolve().parent.parent / "data" / "moe-lm-tiny.safetensors"
"""The checkpoint produced by ``llmsys moe train`` with its defaults, shipped in the package."""


def save_checkpoint(model: MoELM, path: Path, provenance: dict[str, Any] | None = None) -> None:
    """Write ``model`` to ``path`` in bfloat16 (atomically, via a temporary file)."""
    tensors = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    meta = {
        "config": json.dumps(model.cfg.to_dict()),
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "provenance": json.dumps(provenance or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def checkpoint_metadata(path: Path) -> dict[str, Any]:
    """``{'config': MoEConfig, 'provenance': dict}`` of a checkpoint without loading tensors.

    Raises:
        InputError: the file is missing or not a checkpoint of this format.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (OSError, SafetensorError) as exc:
        raise InputError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc
    if meta.get("format_version") != CHECKPOINT_FORMAT_VERSION or "config" not in meta:
        raise InputError(
            f"{path}: not an llmsys MoE checkpoint (format {meta.get('format_version')})"
        )
    return {
        "config": MoEConfig.from_dict(json.loads(meta["config"])),
        "provenance": json.loads(meta.get("provenance", "{}")),
    }


def load_model(path: Path | None = None, dtype: torch.dtype = torch.float32) -> MoELM:
    """Rebuild the model saved at ``path`` (default: the shipped checkpoint) in ``dtype``.

    Raises:
        InputError: the file is missing, corrupt, or its tensors do not fit its config.
    """
    src = SHIPPED_CHECKPOINT if path is None else path
    cfg = checkpoint_metadata(src)["config"]
    model = MoELM(cfg)
    try:
        state = load_file(str(src))
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()})
    except (OSError, SafetensorError, RuntimeError) as exc:
        raise InputError(f"{src}: checkpoint tensors do not match its config ({exc})") from exc
    return model.to(dtype)
