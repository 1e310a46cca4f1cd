"""Native AIO writer, and the ssd tier's hash-while-writing put built on it."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from llmsys.tiermem import MonotonicClock, SsdConfig, aligned_buffer, checksum
from llmsys.tiermem.block import PAGE_BYTES
from llmsys.tiermem.tiers import SsdTier
from llmsys.tiermem.tiers.aio import AioWriter, native_aio_available

from .helpers import BLOCK_BYTES, make_keys

pytestmark = pytest.mark.skipif(
    not native_aio_available(),
    reason=f"no native AIO on {platform.system()}/{platform.machine()}",
)


@pytest.fixture
def direct_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path / "f.bin", os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
    yield fd
    os.close(fd)


def _filled(nbytes: int, seed: int) -> memoryview:
    buf = aligned_buffer(nbytes)
    np.frombuffer(buf, dtype=np.uint8)[:] = np.random.default_rng(seed).integers(0, 256, nbytes)
    return buf


def test_two_writes_in_flight_land_where_asked(direct_fd: int) -> None:
    writer = AioWriter(depth=2)
    a, b = _filled(64 << 10, 1), _filled(PAGE_BYTES, 2)
    writer.submit_write(direct_fd, a, PAGE_BYTES)
    writer.submit_write(direct_fd, b, 0)
    writer.wait()
    got = aligned_buffer(PAGE_BYTES + (64 << 10))
    assert os.preadv(direct_fd, [got], 0) == len(got)
    assert bytes(got[:PAGE_BYTES]) == bytes(b)
    assert bytes(got[PAGE_BYTES:]) == bytes(a)
    writer.wait()  # nothing outstanding: returns at once
    writer.close()
    writer.close()  # idempotent


def test_depth_and_closed_writer_are_refused(direct_fd: int) -> None:
    writer = AioWriter(depth=1)
    buf = _filled(PAGE_BYTES, 3)
    writer.submit_write(direct_fd, buf, 0)
    with pytest.raises(RuntimeError, match="already outstanding"):
        writer.submit_write(direct_fd, buf, PAGE_BYTES)
    writer.close()  # reaps the outstanding write first
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit_write(direct_fd, buf, 0)
    with pytest.raises(ValueError, match="depth"):
        AioWriter(depth=0)


def test_a_failed_write_raises_and_leaves_nothing_outstanding(direct_fd: int) -> None:
    writer = AioWriter(depth=2)
    with pytest.raises(OSError):  # EBADF, refused at submit
        writer.submit_write(-1, _filled(PAGE_BYTES, 4), 0)
    misaligned = memoryview(bytearray(PAGE_BYTES + 1))[1:]  # O_DIRECT needs alignment
    with pytest.raises(OSError):  # EINVAL, at submit or at completion
        writer.submit_write(direct_fd, misaligned, 0)
        writer.wait()
    good = _filled(PAGE_BYTES, 5)
    writer.submit_write(direct_fd, good, 0)  # still usable
    writer.wait()
    writer.close()


def _tier(path: Path, **kw: object) -> SsdTier:
    config = SsdConfig(path, 4 * BLOCK_BYTES, **kw)  # type: ignore[arg-type]
    return SsdTier(config, block_bytes=BLOCK_BYTES, clock=MonotonicClock())


def test_ssd_tier_uses_aio_by_default_and_reports_it(tmp_path: Path) -> None:
    tier = _tier(tmp_path, overlap_min_bytes=BLOCK_BYTES)
    assert tier.async_io and tier.describe()["async_io"] is True
    assert tier.describe()["overlap_min_bytes"] == BLOCK_BYTES
    assert tier.overlap_puts
    key = make_keys(1)[0]
    data = _filled(BLOCK_BYTES, 6)
    assert tier.put(key, data)
    assert tier.checksum_of(key) == checksum(data)
    tier.close()
    sync = _tier(tmp_path, async_io=False)  # reopens the same slot file
    assert not sync.async_io
    out = aligned_buffer(BLOCK_BYTES)
    assert sync.get_into(key, out) is not None and bytes(out) == bytes(data)
    sync.close()


def test_a_failed_header_write_fails_the_put_after_reaping_the_payload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tier = _tier(tmp_path, overlap_min_bytes=0)
    key = make_keys(1)[0]
    writer = tier._writer()
    assert writer is not None
    real_submit = writer.submit_write
    calls: list[int] = []

    def header_fails(fd: int, buf: memoryview, offset: int) -> None:
        calls.append(offset)
        if len(calls) == 2:
            raise OSError(5, "injected header write failure")
        real_submit(fd, buf, offset)

    monkeypatch.setattr(writer, "submit_write", header_fails)
    assert tier.put(key, _filled(BLOCK_BYTES, 7)) is False
    assert writer._outstanding == 0  # the payload write was reaped before put returned
    assert tier.stats().errors == 1 and not tier.contains(key)
    assert len(calls) == 2
    tier.close()


def test_small_blocks_and_known_checksums_take_the_single_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tier = _tier(tmp_path)  # default threshold (2 MiB) is above BLOCK_BYTES
    assert tier.config.overlap_min_bytes > BLOCK_BYTES and not tier.overlap_puts
    overlapped: list[int] = []
    real = tier._write_hashing
    monkeypatch.setattr(tier, "_write_hashing", lambda *a: (overlapped.append(1), real(*a))[1])
    keys = make_keys(2)
    assert tier.put(keys[0], _filled(BLOCK_BYTES, 8))
    tier.close()
    big = _tier(tmp_path, overlap_min_bytes=0)
    real_big = big._write_hashing
    monkeypatch.setattr(big, "_write_hashing", lambda *a: (overlapped.append(2), real_big(*a))[1])
    data = _filled(BLOCK_BYTES, 9)
    assert big.put(keys[1], data, checksum(data))  # checksum known: nothing to hide
    assert overlapped == []
    big.delete(keys[1])
    assert big.put(keys[1], data) and overlapped == [2]
    big.close()


def test_a_forked_child_opens_its_own_context(tmp_path: Path) -> None:
    tier = _tier(tmp_path, overlap_min_bytes=0)
    keys = make_keys(2)
    assert tier.put(keys[0], _filled(BLOCK_BYTES, 10))  # parent's context now exists
    pid = os.fork()
    if pid == 0:  # child: an AIO put must still work (exit status says whether it did)
        ok = tier.put(keys[1], _filled(BLOCK_BYTES, 11)) and tier.stats().errors == 0
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert tier.put(keys[1], _filled(BLOCK_BYTES, 12))  # the parent's context still works
    tier.close()
