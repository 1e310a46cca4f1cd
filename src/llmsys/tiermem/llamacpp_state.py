"""llama.cpp per-sequence state <-> fixed-size, checksummed prefix chunks (pure bytes code).

``llama_state_seq_get_data(ctx, seq_id)`` returns one sequence's KV cells. For a plain
(non-SWA, non-recurrent) KV cache with one stream the bytes are, little-endian::

    preamble        8 bytes, opaque (identical for every state of one build)
    n_stream        u32 == 1
    cell_count      u32 N
    meta            N x (pos i32, n_seq_id u32 == 1, seq_id i32)     cell order
    v_trans         u32
    n_layer         u32 L
    L x  k_type i32, k_row_bytes u64, K rows [N, k_row_bytes]
    v_trans == 0:  L x  v_type i32, v_row_bytes u64, V rows [N, v_row_bytes]
    v_trans == 1:  L x  v_type i32, v_el_bytes u32, n_embd_v u32, V [n_embd_v, N, v_el_bytes]

:func:`parse_seq_state` checks every field and that the parse consumes exactly the buffer;
anything else (SWA or recurrent caches, another build's layout) is a
:class:`StateFormatError`, so a layout change disables the cache instead of serving garbage.
The cache namespace includes the llama.cpp build, so chunks of two builds never meet.

A *chunk* holds the KV of ``block_tokens`` consecutive positions ``[first_pos,
first_pos + block_tokens)`` - the same geometry for every chunk of a model, so it fits the
tiered store's fixed ``block_bytes``::

    chunk header  64 bytes: magic b"LCPC", version, first_pos, n_tokens, payload_bytes,
                  payload xxh3_64, the 24-byte block key, header xxh3_64
    payload       L x K [block_tokens, k_row_bytes], then V per layer
                  ([block_tokens, v_row_bytes], or [n_embd_v, block_tokens, v_el_bytes])

Positions are not stored: a chunk's cells are rebuilt as ``first_pos + arange`` on seq 0.
:class:`ChunkCodec` splits a parsed state into chunks (any cell order: cells are gathered by
position) and assembles leading chunks back into one state for ``llama_state_seq_set_data``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xxhash

from llmsys.tiermem.errors import TierMemError

__all__ = [
    "CHUNK_HEADER_BYTES",
    "ChunkCodec",
    "LayerGeometry",
    "ParsedState",
    "StateFormatError",
    "StateSkeleton",
    "parse_seq_state",
]

PREAMBLE_BYTES = 8
"""Opaque leading bytes of a sequence state (kept and replayed verbatim)."""
CHUNK_HEADER_BYTES = 64
"""Size of a chunk's own header, in front of its payload."""
_CHUNK_MAGIC = b"LCPC"
_CHUNK_VERSION = 1
_CHUNK_BODY = struct.Struct("<4sHHIIQQ24s")
_META_FIELDS = 3  # pos, n_seq_id, seq_id: int32 each


class StateFormatError(TierMemError):
    """A sequence state does not have the layout this module reads (unsupported KV cache
    kind or llama.cpp build); the prefix cache cannot be used with it."""


@dataclass(frozen=True, slots=True)
class LayerGeometry:
    """Byte geometry of one layer's K and V in a sequence state."""

    k_type: int
    """ggml type id of K."""
    k_row_bytes: int
    """Bytes of one cell's K row."""
    v_type: int
    """ggml type id of V."""
    v_el_bytes: int
    """Bytes of one V element (transposed V) or of one cell's V row (v_trans == 0)."""
    n_embd_v: int
    """V rows per cell when transposed; 1 when not."""

    @property
    def v_token_bytes(self) -> int:
        """Bytes of V per cell."""
        return self.v_el_bytes * self.n_embd_v


@dataclass(frozen=True, slots=True)
class StateSkeleton:
    """Everything of a sequence state except its cells: fixed for a model and build."""

    preamble: bytes
    """The opaque leading bytes."""
    v_trans: bool
    """V stored transposed (no flash attention)."""
    layers: tuple[LayerGeometry, ...]
    """Per-layer geometry (``[n_layer]``)."""

    @property
    def kv_token_bytes(self) -> int:
        """K + V bytes of one cell over all layers."""
        return sum(g.k_row_bytes + g.v_token_bytes for g in self.layers)

    def state_bytes(self, n_cells: int) -> int:
        """Size of a state holding ``n_cells`` cells."""
        fixed = PREAMBLE_BYTES + 16 + 24 * len(self.layers)  # n_stream, N, v_trans, L; K+V headers
        return fixed + n_cells * (4 * _META_FIELDS + self.kv_token_bytes)

    def digest(self) -> str:
        """A short hex id of the geometry (part of the cache namespace)."""
        parts = [self.preamble, struct.pack("<?I", self.v_trans, len(self.layers))]
        parts += [
            struct.pack("<iQiQQ", g.k_type, g.k_row_bytes, g.v_type, g.v_el_bytes, g.n_embd_v)
            for g in self.layers
        ]
        return xxhash.xxh3_64_hexdigest(b"".join(parts))


@dataclass(frozen=True, slots=True)
class ParsedState:
    """A validated sequence state: its skeleton plus where each layer's cells lie."""

    skeleton: StateSkeleton
    """Geometry shared by every state of the model."""
    positions: np.ndarray
    """``[n_cells]`` int32 position of each cell, in cell order."""
    k_offsets: tuple[int, ...]
    """Byte offset of each layer's K rows ``[n_cells, k_row_bytes]``."""
    v_offsets: tuple[int, ...]
    """Byte offset of each layer's V data."""

    @property
    def n_cells(self) -> int:
        """Cells in the state."""
        return int(self.positions.shape[0])


class _Reader:
    def __init__(self, raw: memoryview) -> None:
        self.raw = raw
        self.off = 0

    def take(self, fmt: str) -> tuple[int, ...]:
        size = struct.calcsize(fmt)
        if self.off + size > len(self.raw):
            raise StateFormatError("sequence state truncated")
        out = struct.unpack_from(fmt, self.raw, self.off)
        self.off += size
        return out

    def skip(self, nbytes: int) -> int:
        start = self.off
        if nbytes < 0 or start + nbytes > len(self.raw):
            raise StateFormatError("sequence state truncated")
        self.off += nbytes
        return start


def parse_seq_state(raw: bytes | memoryview | np.ndarray, seq_id: int = 0) -> ParsedState:
    """Parse and check the state of sequence ``seq_id`` (layout in the module docstring).

    Raises:
        StateFormatError: any field other than expected, or bytes left over.
    """
    view = raw.data if isinstance(raw, np.ndarray) else memoryview(raw).cast("B")
    rd = _Reader(view)
    preamble = bytes(rd.raw[: rd.skip(PREAMBLE_BYTES) + PREAMBLE_BYTES])
    (n_stream,) = rd.take("<I")
    if n_stream != 1:
        raise StateFormatError(f"expected one KV stream, got {n_stream} (unified KV only)")
    (n_cells,) = rd.take("<I")
    if n_cells == 0:
        raise StateFormatError("empty sequence state carries no layer geometry")
    meta_off = rd.skip(n_cells * 4 * _META_FIELDS)
    meta = np.frombuffer(view, dtype="<i4", count=n_cells * _META_FIELDS, offset=meta_off)
    meta = meta.reshape(n_cells, _META_FIELDS)
    if not (np.all(meta[:, 1] == 1) and np.all(meta[:, 2] == seq_id)):
        raise StateFormatError("cells must belong to exactly the requested sequence")
    v_trans, n_layer = rd.take("<II")
    if v_trans not in (0, 1) or not 0 < n_layer < 4096:
        raise StateFormatError(f"implausible v_trans={v_trans} n_layer={n_layer}")
    k_geom: list[tuple[int, int]] = []
    k_offsets: list[int] = []
    for _ in range(n_layer):
        k_type, k_row = rd.take("<iQ")
        k_geom.append((k_type, k_row))
        k_offsets.append(rd.skip(n_cells * k_row))
    layers: list[LayerGeometry] = []
    v_offsets: list[int] = []
    for k_type, k_row in k_geom:
        if v_trans:
            v_type, v_el, n_embd_v = rd.take("<iII")
        else:
            v_type, v_el = rd.take("<iQ")
            n_embd_v = 1
        v_offsets.append(rd.skip(n_cells * v_el * n_embd_v))
        layers.append(LayerGeometry(k_type, k_row, v_type, v_el, n_embd_v))
    if rd.off != len(view):
        raise StateFormatError(f"{len(view) - rd.off} unexplained bytes after the V data")
    positions = meta[:, 0].copy()
    if len(np.unique(positions)) != n_cells or int(positions.min()) < 0:
        raise StateFormatError("cell positions must be distinct and non-negative")
    skeleton = StateSkeleton(preamble, bool(v_trans), tuple(layers))
    return ParsedState(skeleton, positions, tuple(k_offsets), tuple(v_offsets))


class ChunkCodec:
    """Splits parsed states into chunks of ``block_tokens`` positions and joins them back."""

    def __init__(self, skeleton: StateSkeleton, block_tokens: int) -> None:
        self.skeleton = skeleton
        self.block_tokens = block_tokens
        self.payload_bytes = block_tokens * skeleton.kv_token_bytes
        self.block_bytes = CHUNK_HEADER_BYTES + self.payload_bytes
        # per layer: (K offset, V offset) inside a chunk payload
        offs: list[tuple[int, int]] = []
        pos = 0
        for g in skeleton.layers:
            offs.append((pos, 0))
            pos += block_tokens * g.k_row_bytes
        for i, g in enumerate(skeleton.layers):
            offs[i] = (offs[i][0], pos)
            pos += block_tokens * g.v_token_bytes
        self._chunk_offsets = tuple(offs)

    def encode(
        self,
        state: np.ndarray,
        parsed: ParsedState,
        chunk_indices: Sequence[int],
        keys: Sequence[bytes],
        out: np.ndarray,
    ) -> None:
        """Write chunks ``chunk_indices`` (chunk i = positions ``[i*B, (i+1)*B)``) of
        ``state`` (uint8 ``[state_bytes]``) into ``out`` (uint8 ``[n, block_bytes]``).

        Raises:
            StateFormatError: another skeleton, or a needed position is not in the state.
        """
        if parsed.skeleton != self.skeleton:
            raise StateFormatError("state geometry differs from the one the cache was built for")
        b = self.block_tokens
        cell_of_pos = np.full(int(parsed.positions.max()) + 1, -1, dtype=np.int64)
        cell_of_pos[parsed.positions] = np.arange(parsed.n_cells)
        wanted = np.concatenate([np.arange(i * b, (i + 1) * b) for i in chunk_indices])
        if wanted.size and int(wanted.max()) >= cell_of_pos.size:
            raise StateFormatError("chunk positions beyond the state's cells")
        cells = cell_of_pos[wanted]
        if np.any(cells < 0):
            raise StateFormatError("a chunk position has no cell in the state")
        n = len(chunk_indices)
        payload = out[:, CHUNK_HEADER_BYTES:]
        for g, k_off, v_off, (ck, cv) in zip(
            self.skeleton.layers,
            parsed.k_offsets,
            parsed.v_offsets,
            self._chunk_offsets,
            strict=True,
        ):
            k_rows = state[k_off : k_off + parsed.n_cells * g.k_row_bytes]
            k_rows = k_rows.reshape(parsed.n_cells, g.k_row_bytes)[cells]
            payload[:, ck : ck + b * g.k_row_bytes] = k_rows.reshape(n, -1)
            v_all = state[v_off : v_off + parsed.n_cells * g.v_token_bytes]
            if self.skeleton.v_trans:
                v = v_all.reshape(g.n_embd_v, parsed.n_cells, g.v_el_bytes)[:, cells, :]
                v = v.reshape(g.n_embd_v, n, b * g.v_el_bytes).transpose(1, 0, 2)
            else:
                v = v_all.reshape(parsed.n_cells, g.v_el_bytes)[cells]
            payload[:, cv : cv + b * g.v_token_bytes] = v.reshape(n, -1)
        for row, (idx, key) in enumerate(zip(chunk_indices, keys, strict=True)):
            out[row, :CHUNK_HEADER_BYTES] = np.frombuffer(
                self._header(idx * b, key, payload[row]), dtype=np.uint8
            )

    def _header(self, first_pos: int, key: bytes, payload: np.ndarray) -> bytes:
        body = _CHUNK_BODY.pack(
            _CHUNK_MAGIC,
            _CHUNK_VERSION,
            CHUNK_HEADER_BYTES,
            first_pos,
            self.block_tokens,
            self.payload_bytes,
            xxhash.xxh3_64_intdigest(payload.data),
            bytes(key),
        )
        return body + xxhash.xxh3_64_intdigest(body).to_bytes(8, "little")

    def valid_prefix(self, chunks: np.ndarray, keys: Sequence[bytes]) -> int:
        """How many leading chunks of ``chunks`` (uint8 ``[n, block_bytes]``) are intact and
        belong at chunk index 0, 1, ... under ``keys``: header and payload checksums, key,
        position and geometry. The first bad chunk ends the prefix."""
        for i, key in enumerate(keys[: chunks.shape[0]]):
            row = chunks[i]
            head = row[:CHUNK_HEADER_BYTES].tobytes()
            magic, version, hbytes, first_pos, n_tok, nbytes, xxh, hkey = _CHUNK_BODY.unpack(
                head[: _CHUNK_BODY.size]
            )
            expected_hxxh = xxhash.xxh3_64_intdigest(head[: _CHUNK_BODY.size])
            if (
                magic != _CHUNK_MAGIC
                or version != _CHUNK_VERSION
                or hbytes != CHUNK_HEADER_BYTES
                or int.from_bytes(head[_CHUNK_BODY.size :], "little") != expected_hxxh
                or hkey != bytes(key)
                or first_pos != i * self.block_tokens
                or n_tok != self.block_tokens
                or nbytes != self.payload_bytes
                or xxhash.xxh3_64_intdigest(row[CHUNK_HEADER_BYTES:].data) != xxh
            ):
                return i
        return min(len(keys), int(chunks.shape[0]))

    def assemble(self, chunks: np.ndarray) -> np.ndarray:
        """Join chunks 0..n-1 (uint8 ``[n, block_bytes]``, already validated) into one
        sequence-0 state of ``n * block_tokens`` cells (uint8 ``[state_bytes]``)."""
        sk = self.skeleton
        n = chunks.shape[0]
        b = self.block_tokens
        n_cells = n * b
        state = np.empty(sk.state_bytes(n_cells), dtype=np.uint8)
        pos = 0

        def put(data: bytes) -> None:
            nonlocal pos
            state[pos : pos + len(data)] = np.frombuffer(data, dtype=np.uint8)
            pos += len(data)

        put(sk.preamble)
        put(struct.pack("<II", 1, n_cells))
        meta = np.zeros((n_cells, _META_FIELDS), dtype="<i4")
        meta[:, 0] = np.arange(n_cells)
        meta[:, 1] = 1
        put(meta.tobytes())
        put(struct.pack("<II", int(sk.v_trans), len(sk.layers)))
        payload = chunks[:, CHUNK_HEADER_BYTES:]
        for g, (ck, _) in zip(sk.layers, self._chunk_offsets, strict=True):
            put(struct.pack("<iQ", g.k_type, g.k_row_bytes))
            size = n_cells * g.k_row_bytes
            state[pos : pos + size] = payload[:, ck : ck + b * g.k_row_bytes].reshape(-1)
            pos += size
        for g, (_, cv) in zip(sk.layers, self._chunk_offsets, strict=True):
            if sk.v_trans:
                put(struct.pack("<iII", g.v_type, g.v_el_bytes, g.n_embd_v))
            else:
                put(struct.pack("<iQ", g.v_type, g.v_el_bytes))
            size = n_cells * g.v_token_bytes
            src = payload[:, cv : cv + b * g.v_token_bytes]
            dst = state[pos : pos + size]
            if sk.v_trans:  # [n, n_embd_v, b*el] -> [n_embd_v, n, b*el]
                src3 = src.reshape(n, g.n_embd_v, b * g.v_el_bytes)
                dst.reshape(g.n_embd_v, n, b * g.v_el_bytes)[:] = src3.transpose(1, 0, 2)
            else:
                dst[:] = src.reshape(-1)
            pos += size
        if pos != state.size:
            raise StateFormatError(f"assembled {pos} bytes, expected {state.size} (codec bug)")
        return state
