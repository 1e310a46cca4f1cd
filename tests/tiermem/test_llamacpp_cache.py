"""TieredLlama against plain llama-cpp-python on the bundled SmolLM2 GGUF (real engine).

Prompts are interleaved so the live context never holds the next prompt's prefix: every
reuse must come from the tiered store through the per-sequence state API.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)"
)

from llmsys.core.errors import InputError  # noqa: E402
from llmsys.core.model import bundled_gguf_path  # noqa: E402
from llmsys.tiermem import DramConfig, SsdConfig, StoreConfig, TierConfigError  # noqa: E402
from llmsys.tiermem.keys import chain_keys  # noqa: E402
from llmsys.tiermem.llamacpp import PrefixCacheConfig, TieredLlama  # noqa: E402

BLOCK_TOKENS = 16
LLAMA_KW = {"n_ctx": 512, "n_threads": 1, "n_threads_batch": 1, "verbose": False, "seed": 0}
SYSTEM_A = (
    "You are a careful assistant who answers questions about computers in one line. "
    "Be precise, name the inventor when asked, and never make up facts. "
)
SYSTEM_B = (
    "Ahoy! Ye be talkin' to a pirate who knows the seven seas and their stories. "
    "He speaks of ships, storms, gold and the parrot on his shoulder. "
)


def _model_path() -> str:
    try:
        return str(bundled_gguf_path())
    except Exception as exc:  # any failure to find the model is a skip
        pytest.skip(f"bundled GGUF unavailable: {exc}")


@pytest.fixture(scope="module")
def model_path() -> str:
    return _model_path()


@pytest.fixture(scope="module")
def plain(model_path: str) -> Iterator[llama_cpp.Llama]:
    llm = llama_cpp.Llama(model_path=model_path, **LLAMA_KW)
    yield llm
    llm.close()


def _greedy(llm: llama_cpp.Llama, prompt: str, max_tokens: int = 6) -> str:
    out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, top_k=1)
    return str(out["choices"][0]["text"])


PROMPTS = [
    SYSTEM_A + "Q: What does a CPU cache do?",
    SYSTEM_B + "Q: Where is the treasure buried?",
    SYSTEM_A + "Q: What is a hard disk?",
    SYSTEM_B + "Q: Where is the treasure buried? Tell me more.",
    SYSTEM_A + "Q: What does a CPU cache do? Answer again.",
]


def test_outputs_identical_to_no_cache_with_restores(
    plain: llama_cpp.Llama, model_path: str
) -> None:
    expected = [_greedy(plain, p) for p in PROMPTS]
    tiered = TieredLlama(model_path, prefix_cache=PrefixCacheConfig(BLOCK_TOKENS), **LLAMA_KW)
    try:
        # pass 1 stores A, B chunks; A and B alternate, so each later prompt restores
        got = [_greedy(tiered, p) for p in PROMPTS]
        assert got == expected
        stats = tiered.prefix_stats()
        assert stats.stored_chunks > 0
        assert stats.restores >= 3  # prompts 3, 4, 5 find their system prompt in the store
        assert stats.restored_tokens >= 3 * BLOCK_TOKENS
        assert stats.corrupt_chunks == 0
        # __call__ serves the same completions; the live context holds prompt 5 (A), so
        # B restores from the store, then A does
        again = [
            str(tiered(p, max_tokens=6, temperature=0.0, top_k=1)["choices"][0]["text"])
            for p in (PROMPTS[1], PROMPTS[0])
        ]
        assert again == [expected[1], expected[0]]
        assert tiered.prefix_stats().restores >= stats.restores + 2
    finally:
        tiered.close()


def test_corrupted_chunk_is_a_miss_never_served(plain: llama_cpp.Llama, model_path: str) -> None:
    prompt_a, prompt_b = PROMPTS[0], PROMPTS[1]
    expected = _greedy(plain, prompt_a)
    tiered = TieredLlama(model_path, prefix_cache=PrefixCacheConfig(BLOCK_TOKENS), **LLAMA_KW)
    try:
        _greedy(tiered, prompt_a)  # stores prompt A's chunks
        _greedy(tiered, prompt_b)  # live context now holds B
        tokens = tiered.tokenize(prompt_a.encode())
        keys = chain_keys(
            tiered.namespace, np.asarray(tokens[: len(tokens) // BLOCK_TOKENS * BLOCK_TOKENS])
        )
        assert tiered.store.lookup(keys).num_blocks == len(keys) >= 2
        # flip one KV byte of chunk 1 in place, in dram, behind the store's back
        view = tiered.store.dram.view(keys[1])
        assert view is not None
        view[tiered.codec.block_bytes // 2] ^= 0xFF
        before = tiered.prefix_stats()
        assert _greedy(tiered, prompt_a) == expected
        after = tiered.prefix_stats()
        assert after.corrupt_chunks == before.corrupt_chunks + 1
        # only chunk 0 (before the corrupt one) was restored
        assert after.restored_tokens - before.restored_tokens == BLOCK_TOKENS
    finally:
        tiered.close()


def test_chunks_persist_across_instances_on_ssd(
    plain: llama_cpp.Llama, model_path: str, tmp_path: Path
) -> None:
    probe = TieredLlama(model_path, prefix_cache=PrefixCacheConfig(BLOCK_TOKENS), **LLAMA_KW)
    block_bytes = probe.codec.block_bytes
    probe.close()
    store = StoreConfig(
        tiers=(
            DramConfig(capacity_bytes=block_bytes),  # one chunk: the rest is demoted to ssd
            SsdConfig(directory=tmp_path, capacity_bytes=64 * block_bytes),
        )
    )
    config = PrefixCacheConfig(BLOCK_TOKENS, store=store)
    prompt = PROMPTS[2]
    n_tokens = len(plain.tokenize(prompt.encode()))
    expected = _greedy(plain, prompt)
    first = TieredLlama(model_path, prefix_cache=config, **LLAMA_KW)
    try:
        assert _greedy(first, prompt) == expected
        _greedy(first, PROMPTS[1])  # pushes every chunk of the first prompt down to ssd
        assert first.store.stats().demotions >= 2
    finally:
        first.close()
    # a new process-like instance: dram is empty, the ssd slot file still holds the chunks
    second = TieredLlama(model_path, prefix_cache=config, **LLAMA_KW)
    try:
        assert second.namespace == first.namespace  # same model, same build: same keys
        assert _greedy(second, prompt) == expected
        assert (
            second.prefix_stats().restored_tokens == (n_tokens - 1) // BLOCK_TOKENS * BLOCK_TOKENS
        )
    finally:
        second.close()


def test_bad_input_errors(model_path: str, tmp_path: Path) -> None:
    with pytest.raises(TierConfigError, match="block_tokens"):
        PrefixCacheConfig(block_tokens=0)
    with pytest.raises(TierConfigError, match="StoreConfig"):
        PrefixCacheConfig(store="dram")  # type: ignore[arg-type]
    with pytest.raises(TierConfigError, match="model_fingerprint"):
        PrefixCacheConfig(model_fingerprint="")
    with pytest.raises(InputError, match="does not exist"):
        TieredLlama(str(tmp_path / "missing.gguf"), **LLAMA_KW)
    with pytest.raises(TierConfigError, match="PrefixCacheConfig"):
        TieredLlama(model_path, prefix_cache=32, **LLAMA_KW)  # type: ignore[arg-type]
    tiered = TieredLlama(model_path, prefix_cache=PrefixCacheConfig(8), **LLAMA_KW)
    try:
        with pytest.raises(InputError, match="set_cache"):
            tiered.set_cache(llama_cpp.LlamaRAMCache())
        tiered.set_cache(None)  # accepted: nothing to replace
    finally:
        tiered.close()


def test_prompt_logprobs_with_logits_all_skip_the_restore(model_path: str) -> None:
    # restored positions have no logits rows, so echo+logprobs must evaluate the prompt.
    # Short prompts and 4-token chunks: llama-cpp-python sorts the vocabulary per echoed token
    kw = {**LLAMA_KW, "logits_all": True, "n_ctx": 64}
    prompt_a, prompt_b = "Computers are fast machines that", "Ahoy pirate, where is the gold"
    plain = llama_cpp.Llama(model_path=model_path, **kw)
    tiered = TieredLlama(model_path, prefix_cache=PrefixCacheConfig(4), **kw)
    try:
        args = {"max_tokens": 1, "temperature": 0.0, "top_k": 1, "echo": True, "logprobs": 1}
        want = plain.create_completion(prompt_a, **args)["choices"][0]["logprobs"]
        _greedy(tiered, prompt_a, max_tokens=1)  # stores A
        _greedy(tiered, prompt_b, max_tokens=1)  # stores B; live context now B
        restores = tiered.prefix_stats().restores
        got = tiered.create_completion(prompt_a, **args)["choices"][0]["logprobs"]
        assert tiered.prefix_stats().restores == restores  # skipped for this call
        assert got["tokens"] == want["tokens"]
        assert got["token_logprobs"][1:] == pytest.approx(want["token_logprobs"][1:], abs=1e-3)
        # a plain completion restores again (live context A, B is in the store)
        _greedy(tiered, prompt_b, max_tokens=1)
        assert tiered.prefix_stats().restores == restores + 1
    finally:
        tiered.close()
        plain.close()
