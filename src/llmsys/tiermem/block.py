"""On-tier block format: a fixed 64-byte header, then the raw payload bytes.

Layout (little-endian, 64 bytes)::

    offset size field
         0    4 magic            b"ITMB"
         4    2 version          1
         6    2 header_bytes     64
         8    8 namespace_id     u64, equal to key[:8]
        16    8 payload_bytes    u64
        24    8 payload_xxh3     xxh3_64 of the payload
        32   24 key              the BlockKey this payload belongs to
        56    8 header_xxh3      xxh3_64 of bytes 0..55 (catches torn or forged headers)

Nothing read from a tier is unpickled or evaluated: a block is bytes, checked field by field,
and its payload is copied out only after its checksum matches. A shared Redis that someone
else can write to can therefore at worst cause a counted corrupt miss, never run code.

xxh3_64 runs at 20-40 GB/s per core here (``bench_tiers.py`` measures it against memcpy), so
verifying on every move into DRAM costs a small fraction of any slower tier's bandwidth.

The module also provides page-aligned buffers (``aligned_buffer``): O_DIRECT needs them,
and the benchmark hands them to both a tier and its baseline.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from dataclasses import dataclass

import numpy as np
import xxhash

from llmsys.tiermem.errors import CorruptBlockError
from llmsys.tiermem.keys import KEY_BYTES, BlockKey

MAGIC = b"ITMB"
"""First four bytes of every stored block."""
FORMAT_VERSION = 1
"""Header version written by this code; other versions are rejected as corrupt."""
HEADER_BYTES = 64
"""Size of the fixed header."""
PAGE_BYTES = 4096
"""Alignment (address and length) required by O_DIRECT I/O."""

_BODY = struct.Struct("<4sHHQQQ24s")
_HEADER = struct.Struct("<4sHHQQQ24sQ")
assert _HEADER.size == HEADER_BYTES

checksum = xxhash.xxh3_64_intdigest
"""``checksum(buffer) -> int``: the payload checksum (xxh3_64) of any buffer."""


@dataclass(frozen=True, slots=True)
class BlockHeader:
    """A decoded, self-consistent block header."""

    key: BlockKey
    """The key the payload was stored under."""
    payload_bytes: int
    """Payload length in bytes."""
    payload_xxh3: int
    """xxh3_64 of the payload."""


def encode_header(key: BlockKey, payload_bytes: int, payload_xxh3: int) -> bytes:
    """Return the 64-byte header for a payload of ``payload_bytes`` with checksum."""
    body = _BODY.pack(
        MAGIC,
        FORMAT_VERSION,
        HEADER_BYTES,
        int.from_bytes(key[:8], "little"),
        payload_bytes,
        payload_xxh3,
        bytes(key),
    )
    return body + checksum(body).to_bytes(8, "little")


def decode_header(
    raw: bytes | memoryview,
    expected_key: bytes | None = None,
    expected_payload_bytes: int | None = None,
) -> BlockHeader:
    """Parse and check a header (``raw`` holds at least 64 bytes; extra is ignored).

    Raises:
        CorruptBlockError: short input, wrong magic/version, header checksum mismatch,
            namespace inconsistent with the key, or a key/length other than expected.
    """
    if len(raw) < HEADER_BYTES:
        raise CorruptBlockError(f"block shorter than its {HEADER_BYTES}-byte header")
    head = bytes(raw[:HEADER_BYTES])
    magic, version, hbytes, ns_id, nbytes, xxh, key, hxxh = _HEADER.unpack(head)
    if magic != MAGIC:
        raise CorruptBlockError(f"bad magic {magic!r}")
    if version != FORMAT_VERSION or hbytes != HEADER_BYTES:
        raise CorruptBlockError(f"unsupported block format version {version}/{hbytes}")
    if checksum(head[: _BODY.size]) != hxxh:
        raise CorruptBlockError("header checksum mismatch (torn or forged header)")
    if len(key) != KEY_BYTES or int.from_bytes(key[:8], "little") != ns_id:
        raise CorruptBlockError("header namespace does not match its key")
    if expected_key is not None and key != bytes(expected_key):
        raise CorruptBlockError("block stored under a different key")
    if expected_payload_bytes is not None and nbytes != expected_payload_bytes:
        raise CorruptBlockError(f"payload is {nbytes} bytes, expected {expected_payload_bytes}")
    return BlockHeader(key=BlockKey(key), payload_bytes=nbytes, payload_xxh3=xxh)


def verify_payload(header: BlockHeader, payload: bytes | memoryview) -> None:
    """Check ``payload`` against ``header``.

    Raises:
        CorruptBlockError: wrong length or checksum mismatch.
    """
    if len(payload) != header.payload_bytes:
        raise CorruptBlockError(
            f"payload is {len(payload)} bytes, header says {header.payload_bytes}"
        )
    if checksum(payload) != header.payload_xxh3:
        raise CorruptBlockError("payload checksum mismatch")


def encode_block(key: BlockKey, payload: bytes | memoryview) -> bytes:
    """Return header + payload as one bytes object (the remote tier's wire value)."""
    return encode_header(key, len(payload), checksum(payload)) + bytes(payload)


def round_up(nbytes: int, alignment: int = PAGE_BYTES) -> int:
    """Return ``nbytes`` rounded up to a multiple of ``alignment``."""
    return -(-nbytes // alignment) * alignment


def aligned_buffer(nbytes: int) -> memoryview:
    """Return a zero-filled, page-aligned writable buffer of ``nbytes`` (>0) bytes.

    Backed by an anonymous mmap, so its address and a length rounded to 4 KiB suit O_DIRECT;
    the view is exactly ``nbytes`` long.

    Raises:
        ValueError: ``nbytes`` <= 0.
    """
    if nbytes <= 0:
        raise ValueError(f"buffer size must be positive, got {nbytes}")
    return memoryview(mmap.mmap(-1, round_up(nbytes)))[:nbytes]


def buffer_address(buf: memoryview) -> int:
    """Return the address of the first byte of ``buf`` (any contiguous buffer).

    ctypes takes ~0.5 us for a writable buffer, numpy's ``.ctypes.data`` 3-12 us; on a
    1 MiB ssd put these calls were 5-10% of the time, so the fast path matters.
    """
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(buf))
    except (TypeError, ValueError):  # read-only or empty: numpy accepts those
        return int(np.frombuffer(buf, dtype=np.uint8).ctypes.data)


def is_page_aligned(buf: memoryview) -> bool:
    """Whether ``buf`` starts on a 4 KiB boundary and spans whole pages (O_DIRECT-ready)."""
    return len(buf) % PAGE_BYTES == 0 and buffer_address(buf) % PAGE_BYTES == 0
