"""Block keys: a namespaced, chained prefix hash, computed once per request.

A :class:`Namespace` names everything that makes KV bytes incompatible: the model
fingerprint, the KV dtype, the layout and the block geometry. Its 64-bit ``namespace_id``
prefixes every key, so blocks of two models never collide and the store can reject a key
from another namespace with a byte comparison.

A :class:`BlockKey` is 24 bytes: ``namespace_id`` (8, little-endian) then a 16-byte digest
``xxh3_128(parent_digest || token_ids_of_block as uint32 LE)``, the parent of block 0 being
the namespace's own digest. A key therefore names a whole prefix: equal keys mean equal
tokens from position 0 (up to hash collisions, ~2^-128). Only full blocks get keys; the
trailing partial block of a request is never cached.

:class:`PrefixHasher` extends a request's key chain incrementally as tokens arrive, so each
block is hashed exactly once per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import xxhash

from llmsys.tiermem.errors import BlockInputError, NamespaceMismatchError, TierConfigError

KEY_BYTES = 24
"""Length of a :class:`BlockKey`: 8 bytes namespace id + 16 bytes chained digest."""

_TOKEN_DTYPE = np.dtype("<u4")


class BlockKey(bytes):
    """A 24-byte block key: ``namespace_id`` (u64 LE) then a 16-byte chained digest.

    A ``bytes`` subclass so dict probes use the cached bytes hash, and so the key is its own
    wire format (Redis key suffix, SSD header field) with no encoding step.
    """

    __slots__ = ()

    @property
    def namespace_id(self) -> int:
        """The 64-bit id of the namespace this key belongs to."""
        return int.from_bytes(self[:8], "little")

    @property
    def digest(self) -> bytes:
        """The 16-byte chained prefix digest."""
        return bytes(self[8:])

    def __repr__(self) -> str:
        return f"BlockKey({self.hex()[16:32]}..)"

    def hex_id(self) -> str:
        """Return the key as 48 lowercase hex digits (for logs and file names)."""
        return self.hex()

    @classmethod
    def from_bytes(cls, raw: bytes) -> BlockKey:
        """Parse a key from its 24-byte wire form.

        Raises:
            BlockInputError: ``raw`` is not exactly 24 bytes.
        """
        if len(raw) != KEY_BYTES:
            raise BlockInputError(f"a block key is {KEY_BYTES} bytes, got {len(raw)}")
        return cls(raw)


@dataclass(frozen=True, slots=True)
class Namespace:
    """What makes two KV blocks interchangeable; keys of different namespaces never match."""

    model_fingerprint: str
    """Identity of the weights (e.g. a hash of the checkpoint); any non-empty string."""
    kv_dtype: str
    """KV element type, e.g. ``"float16"``."""
    layout: str
    """KV layout of a block, e.g. ``"layers,kv,heads,tokens,dim"``."""
    block_tokens: int
    """Tokens per block (> 0)."""
    block_bytes: int
    """Bytes of one block's KV for all layers, laid out contiguously (> 0)."""
    namespace_id: int = field(init=False)
    """64-bit id derived from all fields above (computed)."""
    root_digest: bytes = field(init=False, repr=False)
    """16-byte parent digest of block 0 (computed)."""

    def __post_init__(self) -> None:
        """Validate fields and derive the namespace id.

        Raises:
            TierConfigError: an empty string field or a non-positive size.
        """
        for name in ("model_fingerprint", "kv_dtype", "layout"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise TierConfigError(f"Namespace.{name} must be a non-empty string")
        for name in ("block_tokens", "block_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise TierConfigError(f"Namespace.{name} must be a positive int, got {value!r}")
        canonical = "\x1f".join(
            [
                "itme-ns-v1",
                self.model_fingerprint,
                self.kv_dtype,
                self.layout,
                str(self.block_tokens),
                str(self.block_bytes),
            ]
        ).encode()
        object.__setattr__(self, "namespace_id", xxhash.xxh3_64_intdigest(canonical))
        object.__setattr__(self, "root_digest", xxhash.xxh3_128_digest(canonical, seed=1))

    @property
    def id_bytes(self) -> bytes:
        """``namespace_id`` as the 8-byte little-endian key prefix."""
        return self.namespace_id.to_bytes(8, "little")

    def check_key(self, key: bytes) -> BlockKey:
        """Return ``key`` as a :class:`BlockKey` after checking it belongs here.

        Raises:
            BlockInputError: not a 24-byte key.
            NamespaceMismatchError: the key was made for another namespace.
        """
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise BlockInputError(f"a block key is {KEY_BYTES} bytes, got {key!r:.60}")
        if key[:8] != self.id_bytes:
            raise NamespaceMismatchError(
                f"key {key.hex()[:16]}... belongs to namespace "
                f"{int.from_bytes(key[:8], 'little'):#018x}, not {self.namespace_id:#018x}"
            )
        return key if isinstance(key, BlockKey) else BlockKey(key)


def _token_bytes(token_ids: Sequence[int] | np.ndarray) -> bytes:
    """Return token ids as uint32 LE bytes, checking their range.

    Raises:
        BlockInputError: a token id is negative, >= 2^32 or not an integer.
    """
    arr = np.asarray(token_ids)
    if arr.ndim != 1:
        raise BlockInputError(f"token_ids must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return b""
    if not np.issubdtype(arr.dtype, np.integer):
        raise BlockInputError(f"token_ids must be integers, got dtype {arr.dtype}")
    if int(arr.min()) < 0 or int(arr.max()) >= 2**32:
        raise BlockInputError("token ids must lie in [0, 2^32)")
    return arr.astype(_TOKEN_DTYPE, copy=False).tobytes()


def chain_keys(
    namespace: Namespace,
    token_ids: Sequence[int] | np.ndarray,
    parent: BlockKey | None = None,
) -> list[BlockKey]:
    """Return the keys of every full block of ``token_ids`` (shape ``[num_tokens]``).

    ``parent`` is the key of the block just before ``token_ids[0]`` (None: the request
    starts here). Tokens after the last full block get no key.

    Raises:
        BlockInputError: bad token ids.
        NamespaceMismatchError: ``parent`` belongs to another namespace.
    """
    raw = _token_bytes(token_ids)
    prev = namespace.root_digest if parent is None else namespace.check_key(parent)[8:]
    prefix = namespace.id_bytes
    step = namespace.block_tokens * _TOKEN_DTYPE.itemsize
    keys: list[BlockKey] = []
    digest_of = xxhash.xxh3_128_digest
    for start in range(0, len(raw) - step + 1, step):
        prev = digest_of(prev + raw[start : start + step])
        keys.append(BlockKey(prefix + prev))
    return keys


class PrefixHasher:
    """Incremental key chain of one request: feed tokens as they arrive, hash each once.

    ``extend`` returns only the keys of blocks completed by the new tokens; ``keys`` holds
    the whole chain so far. Not thread-safe (one request, one owner).
    """

    def __init__(self, namespace: Namespace) -> None:
        self._namespace = namespace
        self._keys: list[BlockKey] = []
        self._pending: list[int] = []

    @property
    def keys(self) -> list[BlockKey]:
        """Keys of all full blocks seen so far (a copy)."""
        return list(self._keys)

    @property
    def pending_tokens(self) -> int:
        """Tokens received after the last full block (not yet keyed)."""
        return len(self._pending)

    def extend(self, token_ids: Sequence[int] | np.ndarray) -> list[BlockKey]:
        """Append tokens ``[n]``; return the keys of the blocks they completed.

        Raises:
            BlockInputError: bad token ids (the hasher is left unchanged).
        """
        arr = np.asarray(token_ids)
        _token_bytes(arr)  # validate before mutating state
        tokens = self._pending + [int(t) for t in arr.tolist()]
        full = len(tokens) - len(tokens) % self._namespace.block_tokens
        parent = self._keys[-1] if self._keys else None
        new = chain_keys(self._namespace, np.asarray(tokens[:full], dtype=np.int64), parent)
        self._keys.extend(new)
        self._pending = tokens[full:]
        return new
