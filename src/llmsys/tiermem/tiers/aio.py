"""Linux native AIO (``io_setup``/``io_submit``/``io_getevents``) for O_DIRECT writes.

Why the ssd tier needs it: a put must both hash the payload (xxh3, a pass over memory) and
write it. ``os.pwritev`` holds the calling thread for the whole write, so the hash comes on
top of it; a helper thread that writes while the caller hashes costs a hand-off and a
second write in flight, and measured slower on the 2-vCPU machine. With native AIO the
calling thread hands the payload write to the kernel, hashes while the device works, then
submits the header page and reaps both - one thread, no hand-off.

Protocol of :class:`AioWriter` (one per thread: a context's completions go to whichever
thread reaps them, so contexts are never shared; and one per process: a forked child must
open its own, ``pid`` says whose it is):

1. ``submit_write(fd, buf, offset)`` queues one write of ``buf`` (page-aligned, a multiple of
   4 KiB, for O_DIRECT) at ``offset``; at most ``depth`` may be outstanding. The caller keeps
   ``buf`` alive and unmodified until step 2 returns.
2. ``wait()`` reaps every outstanding write and raises :class:`OSError` if any failed or
   came up short. Call it (in a ``finally``) whenever step 1 succeeded, so the kernel is
   never left writing from a buffer the caller reuses.

``open_writer`` returns None (and ``native_aio_available`` False) where native AIO is
unavailable: not Linux x86_64/aarch64, or
the kernel refused a context (``aio-max-nr`` reached, a seccomp filter); callers then write
synchronously. ctypes releases the GIL around each system call.

Why not a library: ``libaio`` on PyPI wraps the same four calls through the libaio shared
library, which a bare Debian image lacks (one more apt package for four system calls), and
io_uring wrappers add a compiled dependency for no gain at one or two writes in flight. The
kernel ABI used here (``struct iocb``, ``struct io_event``) has been stable since 2.6.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import platform
from typing import Final

from llmsys.tiermem.block import buffer_address

_SYSCALLS: Final[dict[str, tuple[int, int, int, int]]] = {
    # io_setup, io_destroy, io_getevents, io_submit
    "x86_64": (206, 207, 208, 209),
    "aarch64": (0, 1, 4, 2),
}
_IOCB_CMD_PWRITE: Final = 1


class _Iocb(ctypes.Structure):
    """``struct iocb`` (linux/aio_abi.h), little-endian layout."""

    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _IoEvent(ctypes.Structure):
    """``struct io_event``."""

    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


assert ctypes.sizeof(_Iocb) == 64 and ctypes.sizeof(_IoEvent) == 32


def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.machine() not in _SYSCALLS:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


_LIBC = _libc()


class AioWriter:
    """A native AIO context for up to ``depth`` outstanding writes; see module docstring."""

    def __init__(self, depth: int = 2) -> None:
        """Create the kernel context.

        Raises:
            ValueError: ``depth`` < 1.
            OSError: native AIO is unavailable here or the kernel refused a context.
        """
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if _LIBC is None:
            where = f"{platform.system()}/{platform.machine()}"
            raise OSError(errno.ENOSYS, f"no native AIO on {where}")
        self._nr = _SYSCALLS[platform.machine()]
        self.depth = depth
        self._ctx = ctypes.c_ulong(0)
        self._call(self._nr[0], ctypes.c_uint(depth), ctypes.byref(self._ctx))
        self._iocbs = (_Iocb * depth)()
        self._ptr = (ctypes.POINTER(_Iocb) * 1)()
        self._events = (_IoEvent * depth)()
        self._want: list[int] = [0] * depth
        self._outstanding = 0
        self.pid = os.getpid()
        """The process that owns the context (a forked child inherits the object, not the
        kernel context)."""

    def _call(self, number: int, *args: object) -> int:
        assert _LIBC is not None
        while True:
            ret = int(_LIBC.syscall(ctypes.c_long(number), *args))
            if ret >= 0:
                return ret
            err = ctypes.get_errno()
            if err != errno.EINTR:
                raise OSError(err, os.strerror(err))

    def submit_write(self, fd: int, buf: memoryview, offset: int) -> None:
        """Queue one write of ``buf`` to ``fd`` at ``offset`` (see the protocol).

        Raises:
            RuntimeError: ``depth`` writes are already outstanding, or the writer is closed.
            OSError: the kernel refused the write (nothing was queued).
        """
        if self._ctx.value == 0:
            raise RuntimeError("AioWriter is closed")
        if self._outstanding >= self.depth:
            raise RuntimeError(f"{self.depth} writes already outstanding; wait() first")
        i = self._outstanding
        cb = self._iocbs[i]
        ctypes.memset(ctypes.byref(cb), 0, ctypes.sizeof(cb))
        cb.aio_data = i
        cb.aio_lio_opcode = _IOCB_CMD_PWRITE
        cb.aio_fildes = fd
        cb.aio_buf = buffer_address(buf)
        cb.aio_nbytes = len(buf)
        cb.aio_offset = offset
        self._ptr[0] = ctypes.pointer(cb)
        self._call(self._nr[3], self._ctx, ctypes.c_long(1), self._ptr)
        self._want[i] = len(buf)
        self._outstanding += 1

    def wait(self) -> None:
        """Reap every outstanding write.

        Raises:
            OSError: a write failed or wrote fewer bytes than asked (all were reaped).
        """
        failure: OSError | None = None
        while self._outstanding:
            got = self._call(
                self._nr[2],
                self._ctx,
                ctypes.c_long(1),
                ctypes.c_long(self.depth),
                self._events,
                None,
            )
            for event in self._events[:got]:
                want = self._want[event.data]
                if event.res < 0:
                    failure = OSError(-event.res, os.strerror(-event.res))
                elif event.res != want:
                    failure = OSError(errno.EIO, f"short write ({event.res} of {want} bytes)")
            self._outstanding -= got
        if failure is not None:
            raise failure

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown may have torn down ctypes
            self.close()

    def close(self) -> None:
        """Reap outstanding writes (errors ignored) and destroy the context; idempotent."""
        if self._ctx.value == 0:
            return
        if self.pid != os.getpid():  # a forked child's copy: the context is the parent's
            self._ctx = ctypes.c_ulong(0)
            return
        with contextlib.suppress(OSError):
            self.wait()
        self._call(self._nr[1], self._ctx)
        self._ctx = ctypes.c_ulong(0)


def open_writer(depth: int = 2) -> AioWriter | None:
    """Return a new :class:`AioWriter`, or None where native AIO is unavailable."""
    try:
        return AioWriter(depth)
    except OSError:
        return None


@functools.cache
def native_aio_available() -> bool:
    """Whether this process can get a native AIO context (probed once, then cached)."""
    writer = open_writer(depth=1)
    if writer is None:
        return False
    writer.close()
    return True
