"""Checkpoints: round trip, corruption, and the real training path at CI size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmsys.core.errors import InputError
from llmsys.moe.lm.checkpoint import checkpoint_metadata, load_model, save_checkpoint
from llmsys.moe.lm.config import MoEConfig
from llmsys.moe.lm.model import MoELM
from llmsys.moe.lm.pretrain import TrainConfig, train_checkpoint

SMALL = MoEConfig(num_layers=2, hidden=32, num_heads=2, num_experts=8, top_k=2, expert_ffn=16)


def test_round_trip_in_bfloat16(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = MoELM(SMALL)
    path = tmp_path / "m.safetensors"
    save_checkpoint(m, path, {"note": "x"})
    back = load_model(path)
    for (name, a), (_, b) in zip(m.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a.to(torch.bfloat16).float(), b), name
    meta = checkpoint_metadata(path)
    assert meta["config"] == SMALL and meta["provenance"] == {"note": "x"}
    assert load_model(path, dtype=torch.float64).blocks[0].moe.w1.dtype == torch.float64


def test_corrupt_and_foreign_files_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(MoELM(SMALL), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError):
        load_model(path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError):
        load_model(tmp_path / "junk.safetensors")
    with pytest.raises(InputError):
        load_model(tmp_path / "absent.safetensors")


def test_training_is_deterministic_and_learns(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=12, batch=4, seq_tokens=32, max_bytes_per_domain=64 * 1024, log_every=4)
    logs_a = train_checkpoint(tmp_path / "a.safetensors", SMALL, cfg)
    logs_b = train_checkpoint(tmp_path / "b.safetensors", SMALL, cfg)
    assert [x.loss for x in logs_a] == [x.loss for x in logs_b]
    assert logs_a[-1].loss < logs_a[0].loss
    a, b = load_model(tmp_path / "a.safetensors"), load_model(tmp_path / "b.safetensors")
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(x, y)
