"""``remote`` tier: a shared Redis server, so several engines share one prefix cache.

Each block is one Redis string ``<key_prefix><24-byte key>`` holding the 64-byte block
header and the payload; nothing is unpickled, and a value whose header or checksum does not
verify is a counted corrupt miss (and is deleted). Multi-block gets and puts go in one
pipeline (one round trip). The tier connects out only; it listens nowhere.

Sharing: blocks written by other processes are found by :meth:`RemoteTier.discover`
(pipelined EXISTS), which adopts them into this tier's index; a block another process
deleted reads as a plain miss. The capacity counts this process's resident blocks; the
server's own ``maxmemory`` governs the shared total.

Failure: any Redis error marks the tier down for ``retry_interval_s``; while down every
call returns a miss / False at once, counted in ``errors``, and ``available`` is False with
``last_error`` saying why. Nothing raises into the caller's hot path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from llmsys.tiermem.block import HEADER_BYTES, checksum, decode_header, encode_header
from llmsys.tiermem.clock import Clock
from llmsys.tiermem.errors import CorruptBlockError, TierConfigError, TierUnavailableError
from llmsys.tiermem.keys import BlockKey
from llmsys.tiermem.policy import PolicyKind
from llmsys.tiermem.tiers.base import _RESIDENT, Tier, TierKind, TransferModel, _Entry, log
from llmsys.tiermem.tiers.dram import _check_common

DEFAULT_REMOTE_MODEL = TransferModel(latency_s=200e-6, read_bytes_per_s=1e9, write_bytes_per_s=1e9)
"""Metadata-only cost of the remote tier (loopback Redis; a network adds its own)."""


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    """Configuration of the ``remote`` tier."""

    capacity_bytes: int
    """Blocks this process may keep resident: ``capacity_bytes // block_bytes``."""
    host: str = "127.0.0.1"
    """Redis host."""
    port: int = 6379
    """Redis port."""
    username: str | None = None
    """ACL user (Redis 6+); None: the default user."""
    password: str | None = field(default=None, repr=False)
    """Password (AUTH); never shown in reprs or descriptions."""
    tls: bool = False
    """Connect with TLS."""
    tls_ca_path: Path | None = None
    """CA bundle to verify the server (TLS)."""
    tls_cert_path: Path | None = None
    """Client certificate (mutual TLS)."""
    tls_key_path: Path | None = None
    """Client private key (mutual TLS)."""
    key_prefix: bytes = b"itme:"
    """Prefix of every Redis key this tier writes."""
    socket_timeout_s: float = 0.5
    """Per-call socket timeout; bounds how long an unreachable server can stall a call."""
    retry_interval_s: float = 1.0
    """After a failure, calls return misses without trying Redis for this long."""
    policy: PolicyKind = PolicyKind.LRU
    """Eviction policy of this tier."""
    model: TransferModel = field(default=DEFAULT_REMOTE_MODEL)
    """Transfer cost used in metadata-only mode."""

    def __post_init__(self) -> None:
        """Raises: TierConfigError: bad capacity, port, timeouts or prefix."""
        _check_common(self.capacity_bytes, self.policy)
        if not 0 < self.port < 65536:
            raise TierConfigError(f"port must be in 1..65535, got {self.port}")
        if self.socket_timeout_s <= 0 or self.retry_interval_s < 0:
            raise TierConfigError("socket_timeout_s must be > 0 and retry_interval_s >= 0")
        if not isinstance(self.key_prefix, bytes):
            raise TierConfigError("key_prefix must be bytes")


class RemoteTier(Tier):
    """Redis-backed shared tier; see module docstring."""

    kind = TierKind.REMOTE

    def __init__(
        self, config: RemoteConfig, *, block_bytes: int, clock: Clock, metadata_only: bool = False
    ) -> None:
        """Create the client (connections are made lazily; an absent server is no error).

        Raises:
            CapacityError: capacity smaller than one block.
        """
        super().__init__(
            block_bytes=block_bytes,
            capacity_bytes=config.capacity_bytes,
            clock=clock,
            model=config.model,
            metadata_only=metadata_only,
        )
        self.config = config
        self.last_error: str | None = None
        self._down_until_s: float | None = None
        self._client: redis.Redis | None = None
        if not metadata_only:
            self._client = redis.Redis(
                host=config.host,
                port=config.port,
                username=config.username,
                password=config.password,
                ssl=config.tls,
                ssl_ca_certs=str(config.tls_ca_path) if config.tls_ca_path else None,
                ssl_certfile=str(config.tls_cert_path) if config.tls_cert_path else None,
                ssl_keyfile=str(config.tls_key_path) if config.tls_key_path else None,
                socket_timeout=config.socket_timeout_s,
                socket_connect_timeout=config.socket_timeout_s,
                # No client-side retries: they would stall the hot path for seconds; the
                # tier's own back-off (retry_interval_s) decides when to try again.
                retry=Retry(NoBackoff(), 0),
                # Without hiredis, redis-py's default 64 KiB socket reads made a 1 MiB GET
                # ~9x slower than block-sized reads here (122 vs 1075 MiB/s); with hiredis
                # (a dependency) 64 KiB-1 MiB reads are equally fast.
                socket_read_size=min(max(64 << 10, block_bytes + HEADER_BYTES), 1 << 20),
            )

    @property
    def available(self) -> bool:
        """False while the tier is backing off after a Redis failure."""
        return self._down_until_s is None or self.clock.now() >= self._down_until_s

    def _redis(self) -> redis.Redis:
        if self._client is None:
            raise TierUnavailableError("remote tier is closed")
        if not self.available:
            raise TierUnavailableError(f"redis unavailable: {self.last_error}")
        return self._client

    def _failed(self, exc: Exception) -> TierUnavailableError:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._down_until_s = self.clock.now() + self.config.retry_interval_s
        return TierUnavailableError(f"redis {self.config.host}:{self.config.port}: {exc}")

    def _rkey(self, key: BlockKey) -> bytes:
        return self.config.key_prefix + key

    def ping(self) -> bool:
        """Whether the server answers now (updates ``available``/``last_error``)."""
        try:
            ok = bool(self._redis().ping())
        except (redis.RedisError, TierUnavailableError) as exc:
            if isinstance(exc, redis.RedisError):
                self._failed(exc)
            return False
        self._down_until_s = None
        return ok

    # ---- data path --------------------------------------------------------------------

    def _decode_into(self, key: BlockKey, value: bytes, out: memoryview) -> None:
        header = decode_header(value, expected_key=key, expected_payload_bytes=self.block_bytes)
        payload = memoryview(value)[HEADER_BYTES:]
        if len(payload) != self.block_bytes or checksum(payload) != header.payload_xxh3:
            raise CorruptBlockError("remote payload checksum mismatch")
        np.copyto(np.frombuffer(out, dtype=np.uint8), np.frombuffer(payload, dtype=np.uint8))

    def _read_into(self, key: BlockKey, entry: _Entry, out: memoryview) -> bool:
        try:
            value = self._redis().get(self._rkey(key))
        except redis.RedisError as exc:
            raise self._failed(exc) from exc
        if value is None:
            return False
        self._decode_into(key, bytes(value), out)  # type: ignore[arg-type]
        return True

    def _value(self, key: BlockKey, entry: _Entry, data: memoryview) -> bytes:
        if entry.checksum is None:
            entry.checksum = checksum(data)
        return b"".join((encode_header(key, self.block_bytes, entry.checksum), data))

    def _write(self, key: BlockKey, entry: _Entry, data: memoryview) -> None:
        try:
            self._redis().set(self._rkey(key), self._value(key, entry, data))
        except redis.RedisError as exc:
            raise self._failed(exc) from exc

    def _discard(self, key: BlockKey, entry: _Entry) -> None:
        try:
            self._redis().delete(self._rkey(key))
        except (redis.RedisError, TierUnavailableError) as exc:
            log.info("remote tier: could not delete %s: %s", key, exc)

    def get_many_into(
        self, keys: Sequence[BlockKey], outs: Sequence[memoryview | None]
    ) -> list[int | None]:
        """Pipelined ``get_into`` of several blocks: one round trip, same results."""
        if self.metadata_only or len(keys) < 2:
            return super().get_many_into(keys, outs)
        for out in outs:
            self._check_buffer(out)
        entries = [self._index.get(k) for k in keys]
        wanted = [i for i, e in enumerate(entries) if e is not None]
        results: list[int | None] = [None] * len(keys)
        values: list[Any] = []
        try:
            pipe = self._redis().pipeline(transaction=False)
            for i in wanted:
                pipe.get(self._rkey(keys[i]))
            values = pipe.execute() if wanted else []
        except (redis.RedisError, TierUnavailableError) as exc:
            if isinstance(exc, redis.RedisError):
                self._failed(exc)
            self._bump(errors=1 if wanted else 0, misses=len(keys))
            return results
        for i, value in zip(wanted, values, strict=True):
            entry = entries[i]
            assert entry is not None
            out = outs[i]
            assert out is not None
            if value is None:
                self._drop(keys[i], entry, discard=False)
                continue
            try:
                self._decode_into(keys[i], value, out)
            except CorruptBlockError as exc:
                log.warning("remote tier: dropping corrupt block %s: %s", keys[i], exc)
                self._drop(keys[i], entry)
                self._bump(corrupt=1)
                continue
            results[i] = self.block_bytes
        hits = sum(r is not None for r in results)
        self._bump(hits=hits, misses=len(keys) - hits)
        return results

    def put_many(self, keys: Sequence[BlockKey], datas: Sequence[memoryview | None]) -> list[bool]:
        """Pipelined ``put`` of several blocks: one round trip, same results."""
        if self.metadata_only or len(keys) < 2:
            return super().put_many(keys, datas)
        for data in datas:
            self._check_buffer(data)
        results = [False] * len(keys)
        pending: list[tuple[int, _Entry]] = []
        try:
            pipe = self._redis().pipeline(transaction=False)
            for i, (key, data) in enumerate(zip(keys, datas, strict=True)):
                entry = self._reserve(key, None)
                if entry is _RESIDENT:
                    results[i] = True
                elif entry is not None:
                    assert data is not None
                    pipe.set(self._rkey(key), self._value(key, entry, data))
                    pending.append((i, entry))
            if pending:
                pipe.execute()
        except (redis.RedisError, TierUnavailableError) as exc:
            if isinstance(exc, redis.RedisError):
                self._failed(exc)
            for _, entry in pending:
                self._unreserve(entry, error=False)
            self._bump(errors=1)
            return results
        for i, entry in pending:
            self._publish(keys[i], entry)
            results[i] = True
        return results

    def discover(self, keys: Sequence[BlockKey]) -> int:
        """Adopt blocks other processes stored: the length of the leading run of ``keys``
        present in Redis (pipelined EXISTS), adopted into the index while slots last."""
        if self.metadata_only or not keys:
            return sum(1 for _ in _leading(k in self._index for k in keys))
        unknown = [k for k in keys if k not in self._index]
        try:
            pipe = self._redis().pipeline(transaction=False)
            for key in unknown:
                pipe.exists(self._rkey(key))
            flags = pipe.execute() if unknown else []
        except (redis.RedisError, TierUnavailableError) as exc:
            if isinstance(exc, redis.RedisError):
                self._failed(exc)
            self._bump(errors=1)
            flags = [0] * len(unknown)
        remote = {k for k, f in zip(unknown, flags, strict=True) if f}
        count = 0
        for key in keys:
            if key not in self._index:
                if key not in remote:
                    break
                entry = self._reserve(key, None)
                if entry is None:
                    break
                if entry is not _RESIDENT:
                    with self._lock:
                        self._index.setdefault(key, entry)
            count += 1
        return count

    def _bump(self, **deltas: int) -> None:
        for name, delta in deltas.items():
            self._count(name, delta)

    def _describe_backend(self) -> dict[str, Any]:
        return {
            "backend": "redis",
            "address": f"{self.config.host}:{self.config.port}",
            "tls": self.config.tls,
            "auth": self.config.password is not None,
            "available": self.available,
            "last_error": self.last_error,
            "policy": self.config.policy.value,
        }

    def close(self) -> None:
        """Close the connection pool (blocks stay in Redis)."""
        if self._client is not None:
            self._client.close()
            self._client = None


def _leading(flags: Any) -> Any:
    for flag in flags:
        if not flag:
            return
        yield flag
