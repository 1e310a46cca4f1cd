"""Injected clocks: one interface for real runs and for trace simulation.

Every timed component of :mod:`llmsys.tiermem` (tier pacing, metadata-only transfer models,
prefetch deadlines) reads time and waits only through a :class:`Clock`:

- :class:`MonotonicClock` is the real one (``time.perf_counter``; waits really wait).
- :class:`ManualClock` is simulated time: ``sleep(d)`` advances it by ``d`` at once and
  ``advance(d)`` lets a simulator move it. A metadata-only store on a ManualClock replays a
  trace through the same code as a real run, at CPU speed.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable

# Below this remaining wait, time.sleep overshoots by more than the wait itself (the
# kernel's timer slack is ~50 us), so the last stretch is spun for accurate pacing.
_SPIN_BELOW_S = 150e-6


@runtime_checkable
class Clock(Protocol):
    """Time source and waiter used by tiers, policies and the prefetcher."""

    def now(self) -> float:
        """Return the current time in seconds (monotonic; origin unspecified)."""
        ...

    def sleep(self, duration_s: float) -> None:
        """Wait ``duration_s`` seconds (simulated clocks advance instead)."""
        ...

    def sleep_until(self, deadline_s: float) -> None:
        """Wait until ``now() >= deadline_s``; return at once if it already is."""
        ...


class MonotonicClock:
    """Real time from ``time.perf_counter``; sub-150 us waits are spun (yielding the GIL)."""

    def now(self) -> float:
        """Return ``time.perf_counter()``."""
        return time.perf_counter()

    def sleep(self, duration_s: float) -> None:
        """Wait ``duration_s`` seconds of real time."""
        if duration_s > 0:
            self.sleep_until(time.perf_counter() + duration_s)

    def sleep_until(self, deadline_s: float) -> None:
        """Sleep most of the way to ``deadline_s``, then spin the last ~150 us."""
        while True:
            remaining_s = deadline_s - time.perf_counter()
            if remaining_s <= 0:
                return
            # time.sleep releases the GIL even for 0 s: a thread pacing a background copy
            # must not hold it while it spins, or the compute thread stalls behind it
            time.sleep(remaining_s - _SPIN_BELOW_S if remaining_s > _SPIN_BELOW_S else 0)


class ManualClock:
    """Simulated time: starts at ``start_s`` and moves only by ``advance``/``sleep``.

    Thread-safe; ``sleep`` from several threads advances the one shared time, so concurrent
    simulated transfers serialise - simulators that model overlap schedule transfers
    themselves and use the durations the tiers report.
    """

    def __init__(self, start_s: float = 0.0) -> None:
        self._now_s = float(start_s)
        self._lock = threading.Lock()

    def now(self) -> float:
        """Return the simulated time in seconds."""
        with self._lock:
            return self._now_s

    def advance(self, duration_s: float) -> float:
        """Move time forward by ``duration_s`` (>= 0) and return the new time.

        Raises:
            ValueError: ``duration_s`` is negative (time never runs backwards).
        """
        if duration_s < 0:
            raise ValueError(f"cannot advance a clock by a negative duration ({duration_s} s)")
        with self._lock:
            self._now_s += duration_s
            return self._now_s

    def sleep(self, duration_s: float) -> None:
        """Advance by ``duration_s`` (negative waits are no-ops, as with real sleeps)."""
        if duration_s > 0:
            self.advance(duration_s)

    def sleep_until(self, deadline_s: float) -> None:
        """Advance to ``deadline_s`` if it lies in the future."""
        with self._lock:
            self._now_s = max(self._now_s, deadline_s)
