"""``ssd`` tier: one O_DIRECT slot file, page-aligned buffers, a small I/O thread pool.

File ``<directory>/itme-<block_bytes>B.slots`` holds ``capacity_blocks`` slots; slot ``s``
starts at ``s * stride`` with ``stride = 4 KiB + round_up(block_bytes, 4 KiB)``::

    [ header page: 64-byte block header, zero padding ][ payload, zero padded ]

Crash safety (``kill -9`` of the writer): a store writes the payload and its header
(``key``, length, xxh3_64 of the payload, header checksum) - in one positional write, or,
when a block of ``overlap_min_bytes`` or more must be hashed, as two writes in flight
together (see below) - and the block is in the index only after every write returned.
Reopening scans the header pages and adopts every slot whose header verifies; ``get_into``
re-verifies the payload checksum, so a torn write (a header describing bytes that did not
all land) is a counted corrupt miss, never served. With ``durable=True`` the payload is
written and ``fdatasync``-ed before the header, which also survives power loss; the
default relies on the page-cache-free O_DIRECT path, which survives process crashes.

Puts that must hash a block of ``overlap_min_bytes`` (2 MiB) or more (``async_io``, the
default): the payload write goes to the kernel through native AIO
(:mod:`llmsys.tiermem.tiers.aio`), the calling thread hashes the payload while the device
writes it, then submits the header page and reaps both. The hash (10-25% of a write's
time on the dev VM, more once a block no longer fits in cache) is then hidden behind the
write instead of added to it, with no helper thread. Smaller blocks, and every block where
native AIO is unavailable, are hashed first and written as header + payload in one
``pwritev``: there a second request costs as much as the hash it would hide.

Evicting a block only frees its slot in memory: its header stays valid on disk until the
slot is reused, so a reopened tier may serve a block evicted just before a crash (correct
bytes, just not promised).

Buffers: ``get_into``/``put`` use the caller's buffer directly when it is page-aligned and
``block_bytes`` is a multiple of 4 KiB (``llmsys.tiermem.block.aligned_buffer`` makes such
buffers); otherwise they go through a per-thread aligned bounce buffer.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmsys.tiermem.block import (
    HEADER_BYTES,
    PAGE_BYTES,
    aligned_buffer,
    checksum,
    decode_header,
    encode_header,
    is_page_aligned,
    round_up,
)
from llmsys.tiermem.clock import Clock
from llmsys.tiermem.errors import CorruptBlockError, TierConfigError, TierUnavailableError
from llmsys.tiermem.keys import BlockKey
from llmsys.tiermem.policy import PolicyKind
from llmsys.tiermem.tiers.aio import AioWriter, native_aio_available, open_writer
from llmsys.tiermem.tiers.base import Tier, TierKind, TransferModel, _Entry
from llmsys.tiermem.tiers.dram import _check_common

DEFAULT_SSD_MODEL = TransferModel(latency_s=80e-6, read_bytes_per_s=1.5e9, write_bytes_per_s=1.3e9)
"""Metadata-only cost of the ssd tier (this machine class: O_DIRECT 1.3-2 GB/s)."""


@dataclass(frozen=True, slots=True)
class SsdConfig:
    """Configuration of the ``ssd`` tier."""

    directory: Path
    """Directory of the slot file (must exist and support O_DIRECT)."""
    capacity_bytes: int
    """Payload capacity; holds ``capacity_bytes // block_bytes`` blocks."""
    policy: PolicyKind = PolicyKind.LRU
    """Eviction policy of this tier."""
    io_threads: int = 2
    """Threads of the I/O pool used by ``get_many_into`` / ``put_many`` (>= 1)."""
    durable: bool = False
    """fdatasync payload before header (survives power loss, costs a flush per block)."""
    async_io: bool = True
    """Hash the payload of puts of ``overlap_min_bytes`` or more while native AIO writes it
    (see module docstring); False, or no native AIO on this kernel: hash, then one
    synchronous write."""
    overlap_min_bytes: int = 2 << 20
    """Smallest block hashed while AIO writes it. The overlapped put pays AIO's completion
    cost and a second request (the header page), which on the dev VM cost about what
    hashing 1-2 MiB does: put/raw with reads interleaved, overlapped vs single write, 0.81
    vs 0.86-0.88 at 1 MiB and 0.90 vs 0.89 at 2 MiB (probes interleaved as
    ``bench_tiers.py`` does), 0.84-0.96 vs 0.77 at 4 MiB (``bench_tiers.py``)."""
    model: TransferModel = field(default=DEFAULT_SSD_MODEL)
    """Transfer cost used in metadata-only mode."""

    def __post_init__(self) -> None:
        """Raises: TierConfigError: bad capacity, policy or thread count."""
        _check_common(self.capacity_bytes, self.policy)
        if not isinstance(self.directory, Path):
            raise TierConfigError(f"directory must be a pathlib.Path, got {self.directory!r}")
        if self.io_threads < 1:
            raise TierConfigError(f"io_threads must be >= 1, got {self.io_threads}")
        if self.overlap_min_bytes < 0:
            raise TierConfigError(f"overlap_min_bytes must be >= 0, got {self.overlap_min_bytes}")


class SsdTier(Tier):
    """O_DIRECT slot file; see module docstring."""

    kind = TierKind.SSD

    def __init__(
        self, config: SsdConfig, *, block_bytes: int, clock: Clock, metadata_only: bool = False
    ) -> None:
        """Open (creating if needed) the slot file and adopt every verified block in it.

        Raises:
            CapacityError: capacity smaller than one block.
            TierUnavailableError: the directory is missing or does not support O_DIRECT.
        """
        super().__init__(
            block_bytes=block_bytes,
            capacity_bytes=config.capacity_bytes,
            clock=clock,
            model=config.model,
            metadata_only=metadata_only,
        )
        self.config = config
        self.payload_stride_bytes = round_up(block_bytes)
        self.stride_bytes = PAGE_BYTES + self.payload_stride_bytes
        self.path = config.directory / f"itme-{block_bytes}B.slots"
        self._direct_ok = block_bytes % PAGE_BYTES == 0
        self._local = threading.local()
        self._writers: list[AioWriter] = []
        self._writers_lock = threading.Lock()
        self.async_io = False
        """Whether puts hash while native AIO writes (``config.async_io`` and the kernel
        allows it; decided at open)."""
        self.overlap_puts = False
        self._pool: ThreadPoolExecutor | None = None
        self._fd: int | None = None
        if metadata_only:
            return
        if not config.directory.is_dir():
            raise TierUnavailableError(f"ssd directory {config.directory} does not exist")
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
        except OSError as exc:
            raise TierUnavailableError(
                f"cannot open {self.path} with O_DIRECT ({exc}); pick a directory on a "
                "filesystem that supports it (ext4, xfs)"
            ) from exc
        size = self.capacity_blocks * self.stride_bytes
        if os.fstat(self._fd).st_size < size:
            os.ftruncate(self._fd, size)
        self._pool = ThreadPoolExecutor(config.io_threads, thread_name_prefix="itme-ssd")
        self.async_io = config.async_io and native_aio_available()
        self.overlap_puts = self.async_io and block_bytes >= config.overlap_min_bytes
        """Whether a put that must hash does so while AIO writes the payload."""
        self._adopt(self._scan())

    # ---- open-time scan ---------------------------------------------------------------

    def _scan(self) -> dict[BlockKey, tuple[int, int | None]]:
        """Read every slot's header page; return the verified ones (first copy of a key)."""
        assert self._fd is not None
        found: dict[BlockKey, tuple[int, int | None]] = {}
        page = aligned_buffer(PAGE_BYTES)
        for slot in range(self.capacity_blocks):
            if os.preadv(self._fd, [page], slot * self.stride_bytes) < HEADER_BYTES:
                continue
            try:
                header = decode_header(page, expected_payload_bytes=self.block_bytes)
            except CorruptBlockError:
                continue
            found.setdefault(header.key, (slot, header.payload_xxh3))
        return found

    # ---- buffers ------------------------------------------------------------------------

    def _header_page(self) -> memoryview:
        page: memoryview | None = getattr(self._local, "page", None)
        if page is None:
            page = aligned_buffer(PAGE_BYTES)
            self._local.page = page
        return page

    def _writer(self) -> AioWriter | None:
        """This thread's AIO context (made on first use; None if the kernel refuses one)."""
        writer: AioWriter | None = getattr(self._local, "writer", None)
        if writer is not None and writer.pid != os.getpid():
            writer = None  # forked: the inherited context belongs to the parent
        if writer is None and not getattr(self._local, "no_aio", False):
            writer = open_writer(depth=2)
            if writer is None:
                self._local.no_aio = True
                return None
            self._local.writer = writer
            with self._writers_lock:
                self._writers.append(writer)
        return writer

    def _bounce(self) -> memoryview:
        bounce: memoryview | None = getattr(self._local, "bounce", None)
        if bounce is None:
            bounce = aligned_buffer(self.payload_stride_bytes)
            self._local.bounce = bounce
        return bounce

    # ---- data path --------------------------------------------------------------------

    def _read_into(self, key: BlockKey, entry: _Entry, out: memoryview) -> bool:
        if self._fd is None:
            raise TierUnavailableError("ssd tier is closed")
        page = self._header_page()
        direct = self._direct_ok and is_page_aligned(out)
        target = out if direct else self._bounce()
        offset = entry.slot * self.stride_bytes
        # One preadv for header page + payload, then the hash: the hash needs the bytes, so
        # only chunked reads could overlap it, and chunked reads on a helper thread
        # measured no better on either machine (thread hand-offs cost more than the hash).
        try:
            want = PAGE_BYTES + len(target)
            got = os.preadv(self._fd, [page, target], offset)
            if got < want:
                raise CorruptBlockError(f"short read ({got} of {want} bytes)")
            digest = checksum(target[: self.block_bytes])
        except OSError as exc:
            raise TierUnavailableError(f"ssd read failed: {exc}") from exc
        header = decode_header(page, expected_key=key, expected_payload_bytes=self.block_bytes)
        if digest != header.payload_xxh3:
            raise CorruptBlockError("ssd payload checksum mismatch (torn or corrupted block)")
        if not direct:
            payload = target[: self.block_bytes]
            np.copyto(np.frombuffer(out, dtype=np.uint8), np.frombuffer(payload, dtype=np.uint8))
        return True

    def _write(self, key: BlockKey, entry: _Entry, data: memoryview) -> None:
        if self._fd is None:
            raise TierUnavailableError("ssd tier is closed")
        page = self._header_page()
        if self._direct_ok and is_page_aligned(data):
            payload = data
        else:
            payload = self._bounce()
            dst = np.frombuffer(payload, dtype=np.uint8)
            dst[: self.block_bytes] = np.frombuffer(data, dtype=np.uint8)
            dst[self.block_bytes :] = 0
        offset = entry.slot * self.stride_bytes
        writer = self._writer() if self.overlap_puts and entry.checksum is None else None
        try:
            if writer is not None:
                self._write_hashing(writer, page, key, entry, data, payload, offset)
                return
            if entry.checksum is None:
                entry.checksum = checksum(data)
            page[:HEADER_BYTES] = encode_header(key, self.block_bytes, entry.checksum)
            if self.config.durable:  # payload, flush, then the header (the publish)
                os.pwritev(self._fd, [payload], offset + PAGE_BYTES)
                os.fdatasync(self._fd)
                os.pwritev(self._fd, [page], offset)
                os.fdatasync(self._fd)
            else:
                os.pwritev(self._fd, [page, payload], offset)
        except OSError as exc:
            raise TierUnavailableError(f"ssd write failed: {exc}") from exc

    def _write_hashing(
        self,
        writer: AioWriter,
        page: memoryview,
        key: BlockKey,
        entry: _Entry,
        data: memoryview,
        payload: memoryview,
        offset: int,
    ) -> None:
        """Hash ``data`` while AIO writes ``payload``, then write the header (see docstring)."""
        assert self._fd is not None
        writer.submit_write(self._fd, payload, offset + PAGE_BYTES)
        try:
            digest = checksum(data)
            if self.config.durable:  # the payload must be on disk before its header
                writer.wait()
                os.fdatasync(self._fd)
            page[:HEADER_BYTES] = encode_header(key, self.block_bytes, digest)
            writer.submit_write(self._fd, page, offset)
        finally:
            writer.wait()  # never leave the kernel writing from a buffer we hand back
        if self.config.durable:
            os.fdatasync(self._fd)
        entry.checksum = digest

    def get_many_into(
        self, keys: Sequence[BlockKey], outs: Sequence[memoryview | None]
    ) -> list[int | None]:
        """``get_into`` for several blocks at once over the I/O pool (same results)."""
        if self._pool is None or len(keys) < 2:
            return [self.get_into(k, o) for k, o in zip(keys, outs, strict=True)]
        return list(self._pool.map(self.get_into, keys, outs))

    def put_many(self, keys: Sequence[BlockKey], datas: Sequence[memoryview | None]) -> list[bool]:
        """``put`` for several blocks at once over the I/O pool (same results)."""
        if self._pool is None or len(keys) < 2:
            return [self.put(k, d) for k, d in zip(keys, datas, strict=True)]
        return list(self._pool.map(self.put, keys, datas))

    def slot_offset_bytes(self, key: BlockKey) -> int | None:
        """File offset of resident ``key``'s header page (for fault-injection tests)."""
        entry = self._index.get(key)
        return None if entry is None else entry.slot * self.stride_bytes

    def _describe_backend(self) -> dict[str, Any]:
        return {
            "backend": "o_direct-slot-file",
            "path": str(self.path),
            "io_threads": self.config.io_threads,
            "durable": self.config.durable,
            "async_io": self.async_io,
            "overlap_min_bytes": self.config.overlap_min_bytes,
            "policy": self.config.policy.value,
        }

    def close(self) -> None:
        """Stop the I/O pool and close the file (blocks stay on disk for the next open)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._pool = None
        with self._writers_lock:
            for writer in self._writers:
                writer.close()
            self._writers.clear()
        self._local = threading.local()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
