"""Prefetch handles and executors: move known-future blocks toward a tier by a deadline.

``TieredStore.prefetch(keys, target, deadline_s)`` returns a :class:`PrefetchHandle` at
once; the moves run on the store's executor (a one-thread pool by default, or
:class:`InlineExecutor` for simulation, which runs them before ``prefetch`` returns). The
handle's ``done`` event is set when the job ends - callers ``wait`` on it, nobody polls.

A job stops early (``expired=True``) when the clock passes ``deadline_s`` before it
finished; blocks already moved stay moved.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from llmsys.tiermem.keys import BlockKey
from llmsys.tiermem.tiers.base import TierKind

_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass(slots=True)
class PrefetchHandle:
    """Progress of one prefetch job; fields are final once ``done`` is set."""

    keys: tuple[BlockKey, ...]
    """Keys asked for, in order."""
    target: TierKind
    """Tier the blocks are moved into (or any faster one)."""
    deadline_s: float | None
    """Clock time after which the job stops moving blocks; None: no deadline."""
    done: threading.Event = field(default_factory=threading.Event)
    """Set when the job has ended (all keys handled, deadline, no room, or failure)."""
    moved_blocks: int = 0
    """Blocks moved into ``target``."""
    already_blocks: int = 0
    """Blocks that were already in ``target`` or a faster tier."""
    missing_blocks: int = 0
    """Blocks found in no tier (or lost to corruption while moving)."""
    expired: bool = False
    """The deadline passed before every key was handled."""
    no_room: bool = False
    """The target tier filled up with pinned blocks (e.g. this job's own) and the job
    stopped early."""
    error: str | None = None
    """Why the job failed, if it did (it never raises into the caller)."""
    finished_at_s: float | None = None
    """Clock time the job ended."""

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the job ends or ``timeout_s`` passes; return whether it ended."""
        return self.done.wait(timeout_s)

    @property
    def ready_blocks(self) -> int:
        """Blocks now in ``target`` or faster (moved + already there)."""
        return self.moved_blocks + self.already_blocks


class InlineExecutor(Executor):
    """Runs each task in the calling thread at submit time (for simulation and tests)."""

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """Run ``fn`` now; return a completed future."""
        future: Future[_T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # the future carries it, as a pool's would
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to stop."""
