"""Pins the public surface of llmsys.tiermem.llamacpp (the llama-cpp-python prefix cache)."""

import pytest

pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)"
)

import llmsys.tiermem.llamacpp as llamacpp


def test_llamacpp_all_is_pinned() -> None:
    assert sorted(llamacpp.__all__) == [
        "PrefixCacheConfig",
        "PrefixCacheStats",
        "StateFormatError",
        "TieredLlama",
        "engine_fingerprint",
        "model_fingerprint",
    ]
    for name in llamacpp.__all__:
        assert hasattr(llamacpp, name)


def test_tiered_llama_is_a_llama() -> None:
    from llama_cpp import Llama

    assert issubclass(llamacpp.TieredLlama, Llama)
    # errors derive from the tiermem tree, so `except TierMemError` catches them
    from llmsys.tiermem import TierMemError

    assert issubclass(llamacpp.StateFormatError, TierMemError)
