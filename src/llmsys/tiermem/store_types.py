"""The value types of the store's protocol: its configuration, lookup result, handles and
counters (the behaviour lives in :mod:`llmsys.tiermem.store`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmsys.tiermem.errors import TierConfigError
from llmsys.tiermem.keys import BlockKey
from llmsys.tiermem.tiers import TierConfig
from llmsys.tiermem.tiers.base import TierKind, TierStats

_ORDER = list(TierKind)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Configuration of a :class:`TieredStore`."""

    tiers: tuple[TierConfig, ...]
    """Tier configs, fastest first; the first must be a ``DramConfig`` (the staging tier)."""
    promote_on_hit: bool = True
    """Move a block read from a slower tier into dram."""
    write_through_remote: bool = True
    """Copy newly stored blocks to the remote tier in the background (sharing)."""
    metadata_only: bool = False
    """Keep sizes, timings and counters only - no bytes (trace simulation)."""

    def __post_init__(self) -> None:
        """Raises: TierConfigError: empty, unordered, duplicated or dram-less tier list."""
        kinds = [_kind_of(c) for c in self.tiers]
        if not kinds or kinds[0] is not TierKind.DRAM:
            raise TierConfigError("the first tier of a store must be dram (DramConfig)")
        if len(set(kinds)) != len(kinds):
            raise TierConfigError(f"each tier kind may appear once, got {[k.value for k in kinds]}")
        if kinds != sorted(kinds, key=_ORDER.index):
            raise TierConfigError("tiers must be ordered fastest first: dram, cxl, ssd, remote")


def _kind_of(config: object) -> TierKind:
    from llmsys.tiermem.tiers import CxlConfig, DramConfig, RemoteConfig, SsdConfig

    for cls, kind in (
        (DramConfig, TierKind.DRAM),
        (CxlConfig, TierKind.CXL),
        (SsdConfig, TierKind.SSD),
        (RemoteConfig, TierKind.REMOTE),
    ):
        if isinstance(config, cls):
            return kind
    raise TierConfigError(f"unknown tier configuration {config!r}")


@dataclass(frozen=True, slots=True)
class PrefixHit:
    """Result of :meth:`TieredStore.lookup`."""

    num_blocks: int
    """Length of the longest cached prefix, in blocks."""
    tiers: tuple[TierKind, ...]
    """Tier of each of those blocks (``[num_blocks]``)."""


@dataclass(slots=True)
class LoadHandle:
    """Blocks pinned by ``prepare_load``; valid until ``complete_load``."""

    keys: tuple[BlockKey, ...]
    """The pinned prefix (may be shorter than asked: only cached blocks are pinned)."""
    tiers: tuple[TierKind, ...]
    """Tier of each block when pinned."""
    completed: bool = False
    """Set by ``complete_load``."""


@dataclass(slots=True)
class StoreHandle:
    """Slots reserved in dram by ``prepare_store``; valid until ``complete_store``."""

    keys: tuple[BlockKey, ...]
    """Keys to write (new ones only; cached or unplaceable keys are left out)."""
    evicted: tuple[BlockKey, ...]
    """Keys that left the store (past the last tier) to make room."""
    written: set[BlockKey] = field(default_factory=set)
    """Keys written so far."""
    completed: bool = False
    """Set by ``complete_store``."""


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counters of a store and of each of its tiers."""

    tiers: tuple[TierStats, ...]
    """Per-tier counters, fastest first."""
    promotions: int
    """Blocks moved to dram on a hit."""
    demotions: int
    """Blocks moved to the next tier on eviction."""
    dropped: int
    """Blocks that left the store entirely."""
    prefetched: int
    """Blocks moved by prefetch jobs."""
