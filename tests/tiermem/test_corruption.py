"""A block that fails verification is a counted corrupt miss and is never served."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import redis

from llmsys.tiermem import (
    CxlBackend,
    CxlConfig,
    MonotonicClock,
    RemoteConfig,
    SsdConfig,
    aligned_buffer,
    checksum,
)
from llmsys.tiermem.block import PAGE_BYTES, encode_header
from llmsys.tiermem.tiers import CxlTier, RemoteTier, SsdTier

from .helpers import BLOCK_BYTES, block_bytes_for, make_keys

CLOCK = MonotonicClock()


def _ssd(path: Path, blocks: int = 4) -> SsdTier:
    return SsdTier(SsdConfig(path, blocks * BLOCK_BYTES), block_bytes=BLOCK_BYTES, clock=CLOCK)


def _poke(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_RDWR)  # buffered: the test plays a faulty disk, not the tier
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_ssd_payload_bit_flip_is_a_corrupt_miss_even_after_reopen(tmp_path: Path) -> None:
    tier = _ssd(tmp_path)
    key = make_keys(1)[0]
    assert tier.put(key, memoryview(block_bytes_for(0)))
    offset = tier.slot_offset_bytes(key)
    assert offset is not None
    tier.close()
    at = BLOCK_BYTES - 100
    flipped = bytes([block_bytes_for(0)[at] ^ 0x01])
    _poke(tier.path, offset + PAGE_BYTES + at, flipped)
    tier = _ssd(tmp_path)
    assert key in tier  # the header still verifies, so the slot is adopted...
    out = aligned_buffer(BLOCK_BYTES)
    assert tier.get_into(key, out) is None  # ...but its payload is never served
    stats = tier.stats()
    assert (stats.corrupt, stats.misses, stats.hits) == (1, 1, 0)
    assert key not in tier
    tier.close()


def test_ssd_torn_header_is_not_adopted(tmp_path: Path) -> None:
    tier = _ssd(tmp_path)
    key = make_keys(1)[0]
    tier.put(key, memoryview(block_bytes_for(0)))
    offset = tier.slot_offset_bytes(key)
    tier.close()
    assert offset is not None
    _poke(tier.path, offset + 20, b"\xff\xff")  # inside payload_bytes/checksum fields
    tier = _ssd(tmp_path)
    assert key not in tier and len(tier) == 0
    tier.close()


def test_ssd_torn_write_header_landed_payload_did_not(tmp_path: Path) -> None:
    # What kill -9 mid-write can leave: a valid header describing a payload of which only
    # the first half reached the disk (the rest is zeros from the preallocated file).
    tier = _ssd(tmp_path)
    tier.close()
    key = make_keys(1)[0]
    data = block_bytes_for(3)
    header = encode_header(key, BLOCK_BYTES, checksum(data))
    _poke(tier.path, 0, header)
    _poke(tier.path, PAGE_BYTES, data[: BLOCK_BYTES // 2].tobytes())
    tier = _ssd(tmp_path)
    assert key in tier
    assert tier.get_into(key, aligned_buffer(BLOCK_BYTES)) is None
    assert tier.stats().corrupt == 1
    tier.close()


def test_cxl_corruption_is_detected_on_the_way_to_dram() -> None:
    config = CxlConfig(4 * BLOCK_BYTES, backend=CxlBackend.EMULATED, bandwidth_bytes_per_s=50e9)
    tier = CxlTier(config, block_bytes=BLOCK_BYTES, clock=CLOCK)
    a, b = make_keys(2)
    tier.put(a, memoryview(block_bytes_for(0)))
    tier.put(b, memoryview(block_bytes_for(1)))
    tier.corrupt_for_test(a, offset=5)
    assert tier.get_into(a, aligned_buffer(BLOCK_BYTES)) is None
    out = aligned_buffer(BLOCK_BYTES)
    assert tier.get_into(b, out) == BLOCK_BYTES
    assert np.array_equal(np.frombuffer(out, dtype=np.uint8), block_bytes_for(1))
    assert tier.stats().corrupt == 1
    tier.close()


def test_forged_redis_values_are_never_served_or_unpickled(
    redis_server: tuple[str, int], redis_client: redis.Redis
) -> None:
    host, port = redis_server
    config = RemoteConfig(4 * BLOCK_BYTES, host=host, port=port)
    tier = RemoteTier(config, block_bytes=BLOCK_BYTES, clock=CLOCK)
    a, b, c = make_keys(3)
    for i, key in enumerate((a, b, c)):
        assert tier.put(key, memoryview(block_bytes_for(i)))

    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("touch /tmp/itme-pwned",))

    # a: replaced by a pickle; b: replaced by c's valid block (wrong key in header);
    # c: one payload byte flipped.
    redis_client.set(b"itme:" + a, pickle.dumps(Boom()))
    good_c = redis_client.get(b"itme:" + c)
    assert good_c is not None
    redis_client.set(b"itme:" + b, good_c)
    flipped = bytearray(good_c)
    flipped[-1] ^= 0x01
    redis_client.set(b"itme:" + c, bytes(flipped))
    outs = [aligned_buffer(BLOCK_BYTES) for _ in range(3)]
    assert tier.get_many_into([a, b, c], outs) == [None, None, None]
    assert tier.stats().corrupt == 3
    assert not os.path.exists("/tmp/itme-pwned")
    assert redis_client.exists(b"itme:" + a) == 0  # corrupt values are deleted
    tier.close()
