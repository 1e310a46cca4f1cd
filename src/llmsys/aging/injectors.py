"""Leak injectors: OpenAI-compatible servers whose memory behaviour is known exactly.

Protocol: an :class:`InjectorConfig` names an :class:`InjectorKind` and its sizes;
:class:`InjectorEngine` is a :class:`~llmsys.aging.openai_api.TextEngine` that answers every
request cheaply (no model: the words ``t0 t1 ...``, ``first_token_delay_s`` before the first
and ``token_delay_s`` between tokens) and retains memory as its kind says;
:func:`serve_injector` runs it as a real process's HTTP server. The ground truth is
:meth:`InjectorConfig.expected_bytes` of the server's own cumulative request and token
counts (both on ``/metrics``), and the gauge ``llmsys_injected_bytes`` says what it holds.

Kinds (``leak_bytes`` is per request unless stated):

- ``per-request``: a ``bytearray`` of ``leak_bytes``, every byte written, kept forever
  (Python heap: visible to tracemalloc).
- ``per-token``: the same, ``leak_bytes`` per generated token.
- ``anon-mmap``: ``mmap.mmap(-1, n)`` with every page touched, never unmapped - the shape of
  vLLM's UCX leak: in RssAnon / Pss_Anon, invisible to tracemalloc and other heap tools.
- ``saturating-cache``: a FIFO cache of ``leak_bytes`` per request, bounded at
  ``cap_bytes``: grows, then stops (the llama.cpp host prompt cache; not a leak).
- ``delayed-leak``: nothing for the first ``start_after_requests`` requests, then
  ``per-request`` (a leak that starts mid-run, for change-point tests).
- ``control``: retains nothing (zero rate).

The cache entries and the ``anon-mmap`` blocks are anonymous mappings, so freeing one gives
its pages straight back to the kernel; a ``bytearray`` cache would leave freed chunks in
glibc's per-thread arenas (one thread per request here) and the plateau would drift.
"""

from __future__ import annotations

import collections
import logging
import mmap
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from llmsys.aging.openai_api import OpenAIServer
from llmsys.aging.probe_errors import ProbeConfigError

__all__ = ["InjectorConfig", "InjectorEngine", "InjectorKind", "serve_injector"]

_LOG = logging.getLogger(__name__)
_PAGE_BYTES = mmap.PAGESIZE


class InjectorKind(Enum):
    """What an injector retains; values are the names used on the command line."""

    PER_REQUEST = "per-request"
    PER_TOKEN = "per-token"
    ANON_MMAP = "anon-mmap"
    SATURATING_CACHE = "saturating-cache"
    DELAYED_LEAK = "delayed-leak"
    CONTROL = "control"


@dataclass(frozen=True, slots=True)
class InjectorConfig:
    """One injector's behaviour. Raises :class:`ProbeConfigError` when out of range."""

    kind: InjectorKind = InjectorKind.CONTROL
    """What to retain (see the module docstring)."""
    leak_bytes: int = 1 << 20
    """Bytes retained per request (per generated token for ``per-token``); >= 0."""
    cap_bytes: int = 64 << 20
    """Bound of the ``saturating-cache`` kind; >= ``leak_bytes``."""
    start_after_requests: int = 100
    """Requests served leak-free before ``delayed-leak`` starts leaking; >= 0."""
    first_token_delay_s: float = 0.02
    """Pause before the first token (a stand-in for prefill), seconds in [0, 60]."""
    token_delay_s: float = 0.002
    """Pause between tokens, seconds in [0, 10]."""
    trace_python_heap: bool = False
    """Run tracemalloc and report it at ``/debug/engine`` (slows Python allocation)."""

    def __post_init__(self) -> None:
        if not isinstance(self.kind, InjectorKind):
            raise ProbeConfigError(f"kind must be an InjectorKind, not {self.kind!r}")
        if self.leak_bytes < 0:
            raise ProbeConfigError(f"leak_bytes must be >= 0, not {self.leak_bytes}")
        if self.cap_bytes < self.leak_bytes:
            raise ProbeConfigError(
                f"cap_bytes ({self.cap_bytes}) must be >= leak_bytes ({self.leak_bytes})"
            )
        if self.start_after_requests < 0:
            raise ProbeConfigError("start_after_requests must be >= 0")
        if not 0.0 <= self.first_token_delay_s <= 60.0:
            raise ProbeConfigError("first_token_delay_s must be in [0, 60]")
        if not 0.0 <= self.token_delay_s <= 10.0:
            raise ProbeConfigError("token_delay_s must be in [0, 10]")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> InjectorConfig:
        """Build from plain values (``kind`` as its string name); unknown keys are an error."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ProbeConfigError(f"unknown injector option(s) {unknown}; known: {sorted(known)}")
        fields = dict(values)
        if "kind" in fields and not isinstance(fields["kind"], InjectorKind):
            try:
                fields["kind"] = InjectorKind(fields["kind"])
            except ValueError:
                names = [k.value for k in InjectorKind]
                raise ProbeConfigError(
                    f"unknown injector kind {fields['kind']!r}; use {names}"
                ) from None
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, the inverse of :meth:`from_dict`."""
        out = asdict(self)
        out["kind"] = self.kind.value
        return out

    def retained_block_bytes(self) -> int:
        """Bytes one retention really takes: mappings are whole pages."""
        if self.kind in (InjectorKind.ANON_MMAP, InjectorKind.SATURATING_CACHE):
            return -(-self.leak_bytes // _PAGE_BYTES) * _PAGE_BYTES
        return self.leak_bytes

    def expected_bytes(self, requests: int, tokens: int) -> int:
        """Ground truth: bytes retained after ``requests`` requests that generated ``tokens``."""
        block = self.retained_block_bytes()
        if self.kind is InjectorKind.CONTROL or block == 0:
            return 0
        if self.kind is InjectorKind.PER_TOKEN:
            return tokens * block
        if self.kind is InjectorKind.DELAYED_LEAK:
            return max(0, requests - self.start_after_requests) * block
        if self.kind is InjectorKind.SATURATING_CACHE:
            return min(requests, self.cap_bytes // block) * block
        return requests * block


class InjectorEngine:
    """A model-free :class:`~llmsys.aging.openai_api.TextEngine` with a known memory footprint."""

    def __init__(self, config: InjectorConfig) -> None:
        self.config = config
        self.model_name = f"llmsys-injector-{config.kind.value}"
        self._lock = threading.Lock()
        self._requests = 0
        self._retained: list[object] = []
        self._cache: collections.deque[mmap.mmap] = collections.deque()
        self._held_bytes = 0
        self._gauge: Gauge | None = None
        if config.trace_python_heap:
            tracemalloc.start()

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Add ``llmsys_injected_bytes``: bytes this injector holds on purpose right now."""
        self._gauge = Gauge(
            "llmsys_injected_bytes", "Bytes retained on purpose by the injector", registry=registry
        )

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """Join the message contents with newlines."""
        return "\n".join(m["content"] for m in messages)

    def generate(self, prompt: str, max_tokens: int) -> tuple[int, Iterator[str]]:
        """Retain the per-request bytes now, then stream ``max_tokens`` words."""
        kind = self.config.kind
        with self._lock:
            self._requests += 1
            n = self._requests
            if kind is InjectorKind.PER_REQUEST or (
                kind is InjectorKind.DELAYED_LEAK and n > self.config.start_after_requests
            ):
                self._keep_heap(self.config.leak_bytes)
            elif kind is InjectorKind.ANON_MMAP:
                self._retained.append(self._touched_map(self.config.leak_bytes))
                self._add(self.config.retained_block_bytes())
            elif kind is InjectorKind.SATURATING_CACHE:
                self._cache_put()
        return len(prompt.split()), self._pieces(max_tokens)

    def _pieces(self, max_tokens: int) -> Iterator[str]:
        cfg = self.config
        if cfg.first_token_delay_s:
            time.sleep(cfg.first_token_delay_s)
        for i in range(max_tokens):
            if i and cfg.token_delay_s:
                time.sleep(cfg.token_delay_s)
            if cfg.kind is InjectorKind.PER_TOKEN:
                with self._lock:
                    self._keep_heap(cfg.leak_bytes)
            yield f" t{i}"

    # ----------------------------------------------------------------- retention
    def _keep_heap(self, n: int) -> None:
        if n:
            # Repetition writes every byte, so every page is resident (bytearray(n) may not be).
            self._retained.append(bytearray(b"\xa5") * n)
            self._add(n)

    @staticmethod
    def _touched_map(n: int) -> mmap.mmap:
        size = max(_PAGE_BYTES, -(-n // _PAGE_BYTES) * _PAGE_BYTES)
        block = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        for offset in range(0, size, _PAGE_BYTES):
            block[offset] = 0xA5
        return block

    def _cache_put(self) -> None:
        block = self.config.retained_block_bytes()
        if block == 0:
            return
        while self._cache and self._held_bytes + block > self.config.cap_bytes:
            self._cache.popleft().close()
            self._add(-block)
        self._cache.append(self._touched_map(block))
        self._add(block)

    def _add(self, n: int) -> None:
        self._held_bytes += n
        if self._gauge is not None:
            self._gauge.set(self._held_bytes)

    def debug_state(self) -> dict[str, Any]:
        """Kind, requests seen, bytes held, and tracemalloc's view when it is on."""
        with self._lock:
            state: dict[str, Any] = {
                "kind": self.config.kind.value,
                "requests": self._requests,
                "injected_bytes": self._held_bytes,
            }
        if tracemalloc.is_tracing():
            current, peak = tracemalloc.get_traced_memory()
            state["traced_current_bytes"] = current
            state["traced_peak_bytes"] = peak
        return state


def serve_injector(config: InjectorConfig, host: str = "127.0.0.1", port: int = 0) -> None:
    """Serve an injector until the process is stopped (blocking; meant for a child process).

    Raises:
        OSError: the port cannot be bound.
    """
    server = OpenAIServer(InjectorEngine(config), host, port)
    _LOG.info("injector %s serving on %s", config.kind.value, server.url)
    server.serve_forever()
