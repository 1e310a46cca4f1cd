"""llmsys.tiermem - the ITME tiered KV block store: dram, cxl, ssd and a shared Redis.

Objects
=======
- :class:`Namespace` (model fingerprint, KV dtype, layout, ``block_tokens``,
  ``block_bytes``) and :class:`BlockKey` (24 bytes: namespace id + chained prefix digest).
  :func:`chain_keys` / :class:`PrefixHasher` compute a request's keys once, incrementally.
  A *block* is the KV of ``block_tokens`` consecutive tokens for all layers, contiguous:
  one transfer per block.
- :class:`Tier` - one interface, four kinds (:class:`TierKind`): ``DRAM`` (preallocated
  arena), ``CXL`` (NUMA node / device-DAX / emulated with paced copies), ``SSD`` (O_DIRECT
  slot file, crash-safe) and ``REMOTE`` (Redis, pipelined, AUTH/TLS). Built from
  :class:`DramConfig`, :class:`CxlConfig`, :class:`SsdConfig`, :class:`RemoteConfig`.
- :class:`TieredStore` over an ordered tier list (:class:`StoreConfig`), with one
  :class:`EvictionPolicy` per tier (:class:`PolicyKind`: LRU, S3-FIFO).

Protocol (vLLM ``kv_offload`` style)
====================================
Scheduler side, per request::

    keys = chain_keys(ns, prompt_token_ids)            # hash once per request
    hit = store.lookup(keys)                           # PrefixHit: num_blocks, tier of each
    store.prefetch(keys[:hit.num_blocks], TierKind.DRAM, deadline_s)  # optional, async

Load (restore a cached prefix)::

    h = store.prepare_load(keys)      # pins the cached prefix; h.keys may be shorter
    n = store.read(h, outs)           # copies into caller buffers; n = leading blocks loaded
    store.complete_load(h)            # unpins

Store (save newly computed blocks)::

    h = store.prepare_store(keys)     # reserves dram slots for new keys only (h.keys)
    for key in h.keys: store.write(h, key, kv_bytes_of(key))
    store.complete_store(h, success=True)   # publishes: lookup sees them from now on

A store handle holds at most as many blocks as dram has unpinned slots (reserved slots are
pinned); store a long prompt in chunks of at most that size. Keys already cached are left
out of ``h.keys``, so storing a shared prefix again costs nothing.

Pinning and eviction
====================
A block is *pinned* from ``prepare_load`` until ``complete_load``, from ``prepare_store``
until ``complete_store``, while a prefetch or a remote write-through copies it. A pinned
block is never evicted, demoted or overwritten; everything else may be. When a tier needs a
slot its policy picks an unpinned victim, which is demoted to the next tier (dram -> cxl ->
ssd -> remote) and leaves the store only past the last one. A hit below dram is promoted
into dram. Blocks are verified (xxh3_64 in a fixed header - magic, version, namespace,
length, checksum) whenever they enter dram from a slower tier; a block that fails is a
counted corrupt miss and is never served. Nothing read from a tier is unpickled.

Real runs and simulation share this code: with ``StoreConfig(metadata_only=True)`` tiers
keep sizes, counters and timings only, waiting each tier's :class:`TransferModel` cost on
the injected :class:`Clock` (:class:`ManualClock` for simulated time), and
:class:`InlineExecutor` runs prefetches synchronously.

Errors
======
::

    LlmsysError
    └── TierMemError
        ├── TierConfigError (ConfigError)   unknown tier, bad/unordered tier list, bad value
        │   └── CapacityError               capacity smaller than one block
        ├── BlockInputError (InputError)    malformed key or buffer list
        │   ├── BlockSizeError              buffer length != block_bytes
        │   └── NamespaceMismatchError      key from another namespace
        ├── CorruptBlockError (InputError)  verification failed (tiers absorb it as a miss)
        ├── HandleStateError                handle used after completion / for another key
        └── TierUnavailableError (ResourceError)  resource unusable at open (never raised
                                                  from lookup/read/prefetch: counted)
"""

from llmsys.tiermem.block import BlockHeader, aligned_buffer, checksum, decode_header
from llmsys.tiermem.clock import Clock, ManualClock, MonotonicClock
from llmsys.tiermem.errors import (
    BlockInputError,
    BlockSizeError,
    CapacityError,
    CorruptBlockError,
    HandleStateError,
    NamespaceMismatchError,
    TierConfigError,
    TierMemError,
    TierUnavailableError,
)
from llmsys.tiermem.keys import BlockKey, Namespace, PrefixHasher, chain_keys
from llmsys.tiermem.policy import EvictionPolicy, LruPolicy, PolicyKind, S3FifoPolicy
from llmsys.tiermem.prefetch import InlineExecutor, PrefetchHandle
from llmsys.tiermem.store import (
    LoadHandle,
    PrefixHit,
    StoreConfig,
    StoreHandle,
    StoreStats,
    TieredStore,
)
from llmsys.tiermem.tiers import (
    CxlBackend,
    CxlConfig,
    CxlProbe,
    DramConfig,
    RemoteConfig,
    SsdConfig,
    Tier,
    TierConfig,
    TierKind,
    TierStats,
    TransferModel,
    open_tier,
    parse_tier_kind,
    probe_cxl,
)

__all__ = [
    "BlockHeader",
    "BlockInputError",
    "BlockKey",
    "BlockSizeError",
    "CapacityError",
    "Clock",
    "CorruptBlockError",
    "CxlBackend",
    "CxlConfig",
    "CxlProbe",
    "DramConfig",
    "EvictionPolicy",
    "HandleStateError",
    "InlineExecutor",
    "LoadHandle",
    "LruPolicy",
    "ManualClock",
    "MonotonicClock",
    "Namespace",
    "NamespaceMismatchError",
    "PolicyKind",
    "PrefetchHandle",
    "PrefixHasher",
    "PrefixHit",
    "RemoteConfig",
    "S3FifoPolicy",
    "SsdConfig",
    "StoreConfig",
    "StoreHandle",
    "StoreStats",
    "Tier",
    "TierConfig",
    "TierConfigError",
    "TierKind",
    "TierMemError",
    "TierStats",
    "TierUnavailableError",
    "TieredStore",
    "TransferModel",
    "aligned_buffer",
    "chain_keys",
    "checksum",
    "decode_header",
    "open_tier",
    "parse_tier_kind",
    "probe_cxl",
]
