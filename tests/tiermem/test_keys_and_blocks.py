"""Keys (namespaced chained prefix hash) and the on-tier block header."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from llmsys.tiermem import (
    BlockInputError,
    BlockKey,
    CorruptBlockError,
    Namespace,
    NamespaceMismatchError,
    PrefixHasher,
    TierConfigError,
    chain_keys,
    checksum,
    decode_header,
)
from llmsys.tiermem.block import encode_block, encode_header

from .helpers import NAMESPACE


def _reference_keys(ns: Namespace, tokens: list[int]) -> list[bytes]:
    """Slow, obviously-correct reference: hash each block from scratch with struct-free ints."""
    keys, parent = [], ns.root_digest
    for start in range(0, len(tokens) - ns.block_tokens + 1, ns.block_tokens):
        block = b"".join(t.to_bytes(4, "little") for t in tokens[start : start + ns.block_tokens])
        parent = xxhash.xxh3_128_digest(parent + block)
        keys.append(ns.namespace_id.to_bytes(8, "little") + parent)
    return keys


@settings(max_examples=50, deadline=None)
@given(tokens=st.lists(st.integers(0, 2**32 - 1), max_size=40))
def test_chain_keys_match_the_reference(tokens: list[int]) -> None:
    assert chain_keys(NAMESPACE, tokens) == _reference_keys(NAMESPACE, tokens)


@settings(max_examples=50, deadline=None)
@given(
    tokens=st.lists(st.integers(0, 50_000), max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=4),
)
def test_incremental_hashing_equals_one_shot(tokens: list[int], cuts: list[int]) -> None:
    hasher = PrefixHasher(NAMESPACE)
    bounds = sorted({0, len(tokens), *[min(c, len(tokens)) for c in cuts]})
    new: list[BlockKey] = []
    for a, b in itertools.pairwise(bounds):
        new.extend(hasher.extend(tokens[a:b]))
    assert new == hasher.keys == chain_keys(NAMESPACE, tokens)
    assert hasher.pending_tokens == len(tokens) % NAMESPACE.block_tokens


def test_keys_depend_on_namespace_and_on_every_earlier_token() -> None:
    tokens = np.arange(16)
    other = Namespace("test-model", "bfloat16", "layers,kv,tokens", 4, NAMESPACE.block_bytes)
    assert set(chain_keys(NAMESPACE, tokens)).isdisjoint(chain_keys(other, tokens))
    changed = tokens.copy()
    changed[0] = 99
    # block 3's tokens are equal, but its prefix differs -> its key differs
    assert chain_keys(NAMESPACE, tokens)[3] != chain_keys(NAMESPACE, changed)[3]
    with pytest.raises(NamespaceMismatchError):
        NAMESPACE.check_key(chain_keys(other, tokens)[0])


def test_bad_tokens_and_namespaces_raise() -> None:
    with pytest.raises(BlockInputError):
        chain_keys(NAMESPACE, [-1, 2, 3, 4])
    with pytest.raises(BlockInputError):
        chain_keys(NAMESPACE, [2**32, 2, 3, 4])
    with pytest.raises(BlockInputError):
        chain_keys(NAMESPACE, np.zeros((2, 4), dtype=np.int64))
    with pytest.raises(TierConfigError):
        Namespace("m", "float16", "l", 0, 1024)
    with pytest.raises(TierConfigError):
        Namespace("", "float16", "l", 16, 1024)


def test_header_round_trip_and_every_field_is_checked() -> None:
    key = chain_keys(NAMESPACE, np.arange(4))[0]
    payload = bytes(range(256)) * 16
    block = encode_block(key, payload)
    header = decode_header(block, expected_key=key, expected_payload_bytes=len(payload))
    assert (header.key, header.payload_bytes, header.payload_xxh3) == (
        key,
        len(payload),
        checksum(payload),
    )
    other_key = chain_keys(NAMESPACE, np.arange(1, 5))[0]
    with pytest.raises(CorruptBlockError):
        decode_header(block, expected_key=other_key)
    with pytest.raises(CorruptBlockError):
        decode_header(block, expected_payload_bytes=len(payload) + 1)
    for offset in range(64):  # any single-byte change of the header is caught
        bad = bytearray(block[:64])
        bad[offset] ^= 0x40
        with pytest.raises(CorruptBlockError):
            decode_header(bytes(bad))
    with pytest.raises(CorruptBlockError):
        decode_header(encode_header(key, 10, 0)[:63])
