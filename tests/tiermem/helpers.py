"""Shared helpers of the tiermem tests: the test namespace, keys and payloads."""

from __future__ import annotations

import numpy as np

from llmsys.tiermem import BlockKey, Namespace, chain_keys

BLOCK_BYTES = 64 << 10
"""Block size used by the contract suite (16 pages: exercises the O_DIRECT direct path)."""

NAMESPACE = Namespace("test-model", "float16", "layers,kv,tokens", 4, BLOCK_BYTES)


def block_bytes_for(i: int, nbytes: int = BLOCK_BYTES) -> np.ndarray:
    """Deterministic payload ``[nbytes]`` uint8 for block number ``i``."""
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, nbytes, dtype=np.uint8)


def make_keys(n: int, offset: int = 0) -> list[BlockKey]:
    """``n`` chained keys of NAMESPACE (a prefix of ``n`` blocks)."""
    tokens = np.arange(offset, offset + n * NAMESPACE.block_tokens)
    return chain_keys(NAMESPACE, tokens)
