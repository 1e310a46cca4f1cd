"""The llama.cpp sequence-state codec against a slow reference writer (no llama_cpp needed).

``reference_state`` writes the documented layout cell by cell with ``struct``; the codec
must parse it, split it into chunks and join leading chunks back byte-for-byte.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmsys.tiermem.llamacpp_state import (
    CHUNK_HEADER_BYTES,
    ChunkCodec,
    LayerGeometry,
    StateFormatError,
    parse_seq_state,
)

PREAMBLE = b"\xd8\x3c\x14\xaf\x00\x00\x00\x00"


Cells = dict[tuple[int, int, str], bytes]


def make_cells(layers: list[LayerGeometry], positions: list[int], seed: int = 0) -> Cells:
    """Random K and V bytes of each (layer, position): ``(layer, pos, "k"|"v") -> bytes``."""
    rng = np.random.default_rng(seed)
    cells: Cells = {}
    for li, g in enumerate(layers):
        for p in positions:
            cells[(li, p, "k")] = rng.integers(0, 256, g.k_row_bytes, dtype=np.uint8).tobytes()
            cells[(li, p, "v")] = rng.integers(0, 256, g.v_token_bytes, dtype=np.uint8).tobytes()
    return cells


def reference_state(
    layers: list[LayerGeometry], v_trans: bool, positions: list[int], cells: Cells
) -> bytes:
    """Write a seq-0 state holding ``positions`` in that cell order, field by field."""
    out = [PREAMBLE, struct.pack("<II", 1, len(positions))]
    out += [struct.pack("<iIi", p, 1, 0) for p in positions]
    out.append(struct.pack("<II", int(v_trans), len(layers)))
    for li, g in enumerate(layers):
        out.append(struct.pack("<iQ", g.k_type, g.k_row_bytes))
        out += [cells[(li, p, "k")] for p in positions]
    for li, g in enumerate(layers):
        if v_trans:
            out.append(struct.pack("<iII", g.v_type, g.v_el_bytes, g.n_embd_v))
            for j in range(g.n_embd_v):  # transposed: element j of every cell, then j+1
                el = g.v_el_bytes
                out += [cells[(li, p, "v")][j * el : (j + 1) * el] for p in positions]
        else:
            out.append(struct.pack("<iQ", g.v_type, g.v_el_bytes))
            out += [cells[(li, p, "v")] for p in positions]
    return b"".join(out)


def state_of(layers: list[LayerGeometry], v_trans: bool, positions: list[int]) -> bytes:
    return reference_state(layers, v_trans, positions, make_cells(layers, positions))


LAYERS = [LayerGeometry(1, 12, 1, 2, 6), LayerGeometry(1, 8, 1, 2, 4)]


def _keys(n: int) -> list[bytes]:
    return [bytes([i + 1]) * 24 for i in range(n)]


@settings(max_examples=40, deadline=None)
@given(
    v_trans=st.booleans(),
    block_tokens=st.integers(1, 5),
    n_chunks=st.integers(1, 4),
    extra=st.integers(0, 4),
    shuffle_seed=st.integers(0, 2**16),
)
def test_split_then_join_equals_reference(
    v_trans: bool, block_tokens: int, n_chunks: int, extra: int, shuffle_seed: int
) -> None:
    layers = LAYERS if v_trans else [LayerGeometry(1, 12, 1, 10, 1), LayerGeometry(0, 4, 8, 6, 1)]
    n = n_chunks * block_tokens + extra
    order = [int(p) for p in np.random.default_rng(shuffle_seed).permutation(n)]
    cells = make_cells(layers, order, seed=shuffle_seed)
    raw = reference_state(layers, v_trans, order, cells)  # cells in any order
    parsed = parse_seq_state(raw)
    assert parsed.skeleton.state_bytes(n) == len(raw)
    codec = ChunkCodec(parsed.skeleton, block_tokens)
    chunks = np.zeros((n_chunks, codec.block_bytes), dtype=np.uint8)
    codec.encode(
        np.frombuffer(raw, np.uint8), parsed, list(range(n_chunks)), _keys(n_chunks), chunks
    )
    assert codec.valid_prefix(chunks, _keys(n_chunks)) == n_chunks
    # k leading chunks join into exactly the in-order state of positions 0..k*B-1
    for k in range(1, n_chunks + 1):
        expected = reference_state(layers, v_trans, list(range(k * block_tokens)), cells)
        assert codec.assemble(chunks[:k]).tobytes() == expected


def test_chunks_can_be_encoded_separately_and_joined() -> None:
    # positions stored out of order [3 0 2 1 5 4]; chunk 1 encoded alone, then chunk 0
    order = [3, 0, 2, 1, 5, 4]
    cells = make_cells(LAYERS, order, seed=7)
    raw = reference_state(LAYERS, True, order, cells)
    parsed = parse_seq_state(raw)
    codec = ChunkCodec(parsed.skeleton, 3)
    chunks = np.zeros((2, codec.block_bytes), dtype=np.uint8)
    state = np.frombuffer(raw, np.uint8)
    codec.encode(state, parsed, [1], _keys(2)[1:], chunks[1:])
    codec.encode(state, parsed, [0], _keys(1), chunks[:1])
    assert codec.assemble(chunks).tobytes() == reference_state(LAYERS, True, list(range(6)), cells)


@pytest.mark.parametrize("where", ["payload", "header", "key", "position"])
def test_a_corrupt_chunk_ends_the_valid_prefix(where: str) -> None:
    raw = state_of(LAYERS, True, list(range(9)))
    parsed = parse_seq_state(raw)
    codec = ChunkCodec(parsed.skeleton, 3)
    chunks = np.zeros((3, codec.block_bytes), dtype=np.uint8)
    keys = _keys(3)
    codec.encode(np.frombuffer(raw, np.uint8), parsed, [0, 1, 2], keys, chunks)
    if where == "payload":
        chunks[1, CHUNK_HEADER_BYTES + 5] ^= 0x10  # one bit of chunk 1's KV
    elif where == "header":
        chunks[1, 9] ^= 0x01  # first_pos field; header checksum no longer matches
    elif where == "key":
        keys = [keys[0], b"\xee" * 24, keys[2]]  # chunk 1 stored under another key
    else:
        chunks[[1, 2]] = chunks[[2, 1]]  # chunks swapped: position check fails
    assert codec.valid_prefix(chunks, keys) == 1


def test_parse_rejects_other_layouts() -> None:
    raw = state_of(LAYERS, True, [0, 1, 2])
    with pytest.raises(StateFormatError, match="unexplained"):
        parse_seq_state(raw + b"\0")
    with pytest.raises(StateFormatError, match="truncated"):
        parse_seq_state(raw[:-1])
    two_streams = raw[:8] + struct.pack("<I", 2) + raw[12:]
    with pytest.raises(StateFormatError, match="one KV stream"):
        parse_seq_state(two_streams)
    other_seq = bytearray(raw)
    struct.pack_into("<i", other_seq, 16 + 8, 1)  # cell 0 claims seq 1
    with pytest.raises(StateFormatError, match="sequence"):
        parse_seq_state(bytes(other_seq))
    empty = PREAMBLE + struct.pack("<II", 1, 0)
    with pytest.raises(StateFormatError, match="empty"):
        parse_seq_state(empty)


def test_encode_rejects_missing_positions_and_other_geometry() -> None:
    raw = state_of(LAYERS, True, [0, 1, 2, 4])  # position 3 missing
    parsed = parse_seq_state(raw)
    codec = ChunkCodec(parsed.skeleton, 2)
    out = np.zeros((1, codec.block_bytes), dtype=np.uint8)
    with pytest.raises(StateFormatError, match="no cell"):
        codec.encode(np.frombuffer(raw, np.uint8), parsed, [1], _keys(1), out)
    other_raw = state_of(LAYERS[:1], True, [0, 1])
    other = parse_seq_state(other_raw)
    with pytest.raises(StateFormatError, match="geometry"):
        codec.encode(np.frombuffer(other_raw, np.uint8), other, [0], _keys(1), out)
