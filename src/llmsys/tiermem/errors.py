"""The exception tree of :mod:`llmsys.tiermem`.

::

    LlmsysError
    └── TierMemError
        ├── TierConfigError        (ConfigError)  bad tier/store configuration: unknown tier
        │   └── CapacityError                     capacity smaller than one block
        ├── BlockInputError        (InputError)   bad block handed to the store
        │   ├── BlockSizeError                    payload length != the store's block_bytes
        │   └── NamespaceMismatchError            key from another namespace
        ├── CorruptBlockError      (InputError)   header/checksum failed (internal: tiers turn
        │                                          it into a counted "corrupt miss")
        ├── HandleStateError                      a load/store handle used out of order
        └── TierUnavailableError   (ResourceError) a tier's backing resource is unusable
                                                   (the store never lets it reach the hot path)

Every class derives from a :mod:`llmsys.core.errors` class, so ``except ValueError`` still
catches bad arguments and ``except LlmsysError`` catches everything raised on purpose.
"""

from __future__ import annotations

from llmsys.core.errors import ConfigError, InputError, LlmsysError, ResourceError


class TierMemError(LlmsysError):
    """Base class of every error :mod:`llmsys.tiermem` raises on purpose."""


class TierConfigError(TierMemError, ConfigError):
    """A tier or store configuration is invalid (e.g. an unknown tier kind)."""


class CapacityError(TierConfigError):
    """A tier's capacity is smaller than one block, so it could never hold anything."""


class BlockInputError(TierMemError, InputError):
    """A block or key handed to the store is malformed."""


class BlockSizeError(BlockInputError):
    """A payload's length differs from the store's fixed ``block_bytes``."""


class NamespaceMismatchError(BlockInputError):
    """A key was made for another namespace (model, KV dtype, layout or block size)."""


class CorruptBlockError(TierMemError, InputError):
    """Bytes read from a tier failed header or checksum verification.

    Tiers catch this themselves: a corrupt block is counted and reported as a miss, never
    served. It is public so tools that decode blocks directly can catch it.
    """


class HandleStateError(TierMemError, RuntimeError):
    """A load/store handle was used after completion or for a key it does not cover."""


class TierUnavailableError(TierMemError, ResourceError):
    """A tier's backing resource (a file, a device, a Redis server) cannot be used."""
