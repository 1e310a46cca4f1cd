"""Eviction policies: pure bookkeeping over keys, no bytes, no clocks, no I/O.

A policy tracks the keys resident in one tier and answers one question: which unpinned key
goes next. The tier/store calls

- ``insert(key)`` when a block becomes resident,
- ``touch(key)`` on every hit,
- ``remove(key)`` when a block leaves for another reason (deleted, corrupt, promoted),
- ``evict(is_pinned)`` to pick and drop a victim; pinned keys are skipped, ``None`` means
  every resident key is pinned.

Because policies see only keys, the simulator replays traces through the very same objects.

- :class:`LruPolicy`: least recently used.
- :class:`S3FifoPolicy`: S3-FIFO (Yang et al., SOSP'23): a small probationary FIFO (10 %),
  a main FIFO with 2-bit frequency and a ghost FIFO of recently evicted keys; one-hit
  wonders (scans) leave through the small queue without displacing the hot set.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Hashable

from llmsys.tiermem.errors import TierConfigError


class PolicyKind(enum.Enum):
    """Which eviction policy a tier uses."""

    LRU = "lru"
    """Least recently used."""
    S3FIFO = "s3fifo"
    """S3-FIFO: scan-resistant, FIFO queues only."""


class EvictionPolicy(ABC):
    """Victim selection over the keys resident in one tier (see module docstring)."""

    @abstractmethod
    def insert(self, key: Hashable) -> None:
        """Record that ``key`` became resident (re-inserting a resident key touches it)."""

    @abstractmethod
    def touch(self, key: Hashable) -> None:
        """Record a hit on resident ``key`` (unknown keys are ignored)."""

    @abstractmethod
    def remove(self, key: Hashable) -> None:
        """Forget ``key`` without treating it as evicted (unknown keys are ignored)."""

    @abstractmethod
    def evict(self, is_pinned: Callable[[Hashable], bool]) -> Hashable | None:
        """Pick an unpinned victim, forget it and return it; None if all are pinned."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of resident keys tracked."""

    @abstractmethod
    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is resident."""


class LruPolicy(EvictionPolicy):
    """Least-recently-used: the victim is the coldest unpinned key."""

    def __init__(self) -> None:
        self._order: OrderedDict[Hashable, None] = OrderedDict()

    def insert(self, key: Hashable) -> None:
        """Make ``key`` the most recently used."""
        self._order[key] = None
        self._order.move_to_end(key)

    def touch(self, key: Hashable) -> None:
        """Make resident ``key`` the most recently used."""
        if key in self._order:
            self._order.move_to_end(key)

    def remove(self, key: Hashable) -> None:
        """Forget ``key``."""
        self._order.pop(key, None)

    def evict(self, is_pinned: Callable[[Hashable], bool]) -> Hashable | None:
        """Drop and return the least recently used unpinned key."""
        for key in self._order:
            if not is_pinned(key):
                del self._order[key]
                return key
        return None

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, key: object) -> bool:
        return key in self._order


class S3FifoPolicy(EvictionPolicy):
    """S3-FIFO over ``capacity_blocks`` slots (small queue = 10 %, ghost = capacity)."""

    _MAX_FREQ = 3

    def __init__(self, capacity_blocks: int, small_fraction: float = 0.1) -> None:
        """Create an empty policy.

        Raises:
            TierConfigError: ``capacity_blocks`` < 1 or ``small_fraction`` not in (0, 1).
        """
        if capacity_blocks < 1:
            raise TierConfigError(f"S3-FIFO needs capacity_blocks >= 1, got {capacity_blocks}")
        if not 0.0 < small_fraction < 1.0:
            raise TierConfigError(f"small_fraction must be in (0, 1), got {small_fraction}")
        self._small_target = max(1, int(capacity_blocks * small_fraction))
        self._ghost_limit = capacity_blocks
        # Queues are OrderedDicts used as FIFOs: first item = oldest. Values are frequencies.
        self._small: OrderedDict[Hashable, int] = OrderedDict()
        self._main: OrderedDict[Hashable, int] = OrderedDict()
        self._ghost: OrderedDict[Hashable, None] = OrderedDict()

    def insert(self, key: Hashable) -> None:
        """Admit ``key``: to main if it was recently evicted (ghost hit), else to small."""
        if key in self._small or key in self._main:
            self.touch(key)
            return
        if key in self._ghost:
            del self._ghost[key]
            self._main[key] = 0
        else:
            self._small[key] = 0

    def touch(self, key: Hashable) -> None:
        """Count a hit (saturating at 3)."""
        if key in self._small:
            self._small[key] = min(self._small[key] + 1, self._MAX_FREQ)
        elif key in self._main:
            self._main[key] = min(self._main[key] + 1, self._MAX_FREQ)

    def remove(self, key: Hashable) -> None:
        """Forget ``key`` (not added to the ghost queue)."""
        self._small.pop(key, None)
        self._main.pop(key, None)

    def evict(self, is_pinned: Callable[[Hashable], bool]) -> Hashable | None:
        """Run S3-FIFO's eviction until an unpinned key leaves; skip pinned ones."""
        # Every key is examined at most _MAX_FREQ + 2 times before it must leave or be
        # found pinned, so this bound ends the loop even when everything is pinned.
        budget = (self._MAX_FREQ + 2) * (len(self._small) + len(self._main)) + 1
        for _ in range(budget):
            if self._small and (len(self._small) >= self._small_target or not self._main):
                victim = self._evict_small_step(is_pinned)
            elif self._main:
                victim = self._evict_main_step(is_pinned)
            else:
                return None
            if victim is not None:
                return victim
        return None

    def _evict_small_step(self, is_pinned: Callable[[Hashable], bool]) -> Hashable | None:
        key, freq = self._small.popitem(last=False)
        if is_pinned(key):
            # Pinned keys are in use right now: treat them as accessed.
            self._main[key] = min(freq, self._MAX_FREQ)
            return None
        if freq > 1:
            self._main[key] = 0
            return None
        self._ghost[key] = None
        while len(self._ghost) > self._ghost_limit:
            self._ghost.popitem(last=False)
        return key

    def _evict_main_step(self, is_pinned: Callable[[Hashable], bool]) -> Hashable | None:
        key, freq = self._main.popitem(last=False)
        if freq > 0 or is_pinned(key):
            self._main[key] = max(freq - 1, 0)
            return None
        return key

    def __len__(self) -> int:
        return len(self._small) + len(self._main)

    def __contains__(self, key: object) -> bool:
        return key in self._small or key in self._main


def make_policy(kind: PolicyKind, capacity_blocks: int) -> EvictionPolicy:
    """Return a new policy of ``kind`` for a tier of ``capacity_blocks`` slots.

    Raises:
        TierConfigError: ``kind`` is not a :class:`PolicyKind`.
    """
    if kind is PolicyKind.LRU:
        return LruPolicy()
    if kind is PolicyKind.S3FIFO:
        return S3FifoPolicy(capacity_blocks)
    raise TierConfigError(f"unknown eviction policy {kind!r}; use a PolicyKind")
