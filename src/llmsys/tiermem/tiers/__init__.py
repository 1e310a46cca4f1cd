"""The tiers of the store and the one factory that builds them from configs.

A tier configuration's *type* says which tier it builds (no class-name strings):
:class:`DramConfig` -> :class:`DramTier`, :class:`CxlConfig` -> :class:`CxlTier`,
:class:`SsdConfig` -> :class:`SsdTier`, :class:`RemoteConfig` -> :class:`RemoteTier`.
"""

from __future__ import annotations

from llmsys.tiermem.clock import Clock
from llmsys.tiermem.errors import TierConfigError
from llmsys.tiermem.tiers.base import Tier, TierKind, TierStats, TransferModel
from llmsys.tiermem.tiers.cxl import CxlBackend, CxlConfig, CxlProbe, CxlTier, probe_cxl
from llmsys.tiermem.tiers.dram import DramConfig, DramTier
from llmsys.tiermem.tiers.remote import RemoteConfig, RemoteTier
from llmsys.tiermem.tiers.ssd import SsdConfig, SsdTier

TierConfig = DramConfig | CxlConfig | SsdConfig | RemoteConfig
"""Any tier configuration."""

__all__ = [
    "CxlBackend",
    "CxlConfig",
    "CxlProbe",
    "CxlTier",
    "DramConfig",
    "DramTier",
    "RemoteConfig",
    "RemoteTier",
    "SsdConfig",
    "SsdTier",
    "Tier",
    "TierConfig",
    "TierKind",
    "TierStats",
    "TransferModel",
    "open_tier",
    "parse_tier_kind",
    "probe_cxl",
]


def parse_tier_kind(name: str) -> TierKind:
    """Return the :class:`TierKind` named ``name`` (``dram``, ``cxl``, ``ssd``, ``remote``).

    Raises:
        TierConfigError: no tier has that name.
    """
    try:
        return TierKind(name.strip().lower())
    except ValueError:
        known = ", ".join(k.value for k in TierKind)
        raise TierConfigError(f"unknown tier {name!r}; known tiers: {known}") from None


def open_tier(
    config: TierConfig, *, block_bytes: int, clock: Clock, metadata_only: bool = False
) -> Tier:
    """Build the tier that ``config``'s type names.

    Raises:
        TierConfigError: ``config`` is not a tier configuration.
        CapacityError: its capacity is smaller than one block.
        TierUnavailableError: its backing resource cannot be opened.
    """
    if isinstance(config, DramConfig):
        return DramTier(config, block_bytes=block_bytes, clock=clock, metadata_only=metadata_only)
    if isinstance(config, CxlConfig):
        return CxlTier(config, block_bytes=block_bytes, clock=clock, metadata_only=metadata_only)
    if isinstance(config, SsdConfig):
        return SsdTier(config, block_bytes=block_bytes, clock=clock, metadata_only=metadata_only)
    if isinstance(config, RemoteConfig):
        return RemoteTier(config, block_bytes=block_bytes, clock=clock, metadata_only=metadata_only)
    raise TierConfigError(f"unknown tier configuration {config!r}")
