"""The public API of llmsys.tiermem is pinned: changing it is a deliberate act."""

from __future__ import annotations

import llmsys.tiermem as tiermem

EXPECTED = sorted(
    [
        "BlockHeader", "BlockInputError", "BlockKey", "BlockSizeError", "CapacityError",
        "Clock", "CorruptBlockError", "CxlBackend", "CxlConfig", "CxlProbe", "DramConfig",
        "EvictionPolicy", "HandleStateError", "InlineExecutor", "LoadHandle", "LruPolicy",
        "ManualClock", "MonotonicClock", "Namespace", "NamespaceMismatchError", "PolicyKind",
        "PrefetchHandle", "PrefixHasher", "PrefixHit", "RemoteConfig", "S3FifoPolicy",
        "SsdConfig", "StoreConfig", "StoreHandle", "StoreStats", "Tier", "TierConfig",
        "TierConfigError", "TierKind", "TierMemError", "TierStats", "TierUnavailableError",
        "TieredStore", "TransferModel", "aligned_buffer", "chain_keys", "checksum",
        "decode_header", "open_tier", "parse_tier_kind", "probe_cxl",
    ]
)  # fmt: skip


def test_all_is_pinned() -> None:
    assert sorted(tiermem.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(tiermem, name), name


def test_errors_derive_from_the_core_tree() -> None:
    from llmsys.core.errors import ConfigError, InputError, LlmsysError, ResourceError

    assert issubclass(tiermem.TierMemError, LlmsysError)
    assert issubclass(tiermem.CapacityError, ConfigError)
    assert issubclass(tiermem.NamespaceMismatchError, InputError)
    assert issubclass(tiermem.BlockSizeError, ValueError)
    assert issubclass(tiermem.TierUnavailableError, ResourceError)
