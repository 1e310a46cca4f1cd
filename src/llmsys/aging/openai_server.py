"""llmsys's own OpenAI-compatible server over transformers with the bundled SmolLM2 model.

Protocol: :func:`serve_llmsys` loads the bundled model
(:func:`llmsys.core.model.load_bundled_model`), applies the :class:`ServerConfig`
(torch threads, garbage-collector mode) and serves a :class:`TransformersEngine` through
:class:`~llmsys.aging.openai_api.OpenAIServer` (routes, SSE and metrics are there).

Generation is greedy, one request at a time (a lock: the CPU model is the bottleneck and
``DynamicCache`` is not shared across threads), token by token with the KV cache, so each
SSE chunk leaves as soon as its token exists. With ``prefix_reuse`` on, the KV cache after
each prompt's prefill is kept in an LRU of ``prefix_cache_entries`` entries; a new prompt
copies the entry with the longest common token prefix, crops it to that prefix and prefills
only the rest - the same greedy tokens, less prefill, and a bounded (saturating) memory
cost of up to ``prefix_cache_entries`` x prompt tokens x ``kv_bytes_per_token``.
Metrics added: ``llmsys_prefix_cache_entries``, ``llmsys_prefix_cache_tokens``,
``llmsys_prefix_hit_tokens_total``.
"""

from __future__ import annotations

import collections
import copy
import gc
import logging
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from llmsys.aging.openai_api import OpenAIServer
from llmsys.aging.probe_errors import ProbeConfigError

__all__ = ["GcMode", "ServerConfig", "TransformersEngine", "serve_llmsys"]

_LOG = logging.getLogger(__name__)


class GcMode(Enum):
    """What the server does with Python's cyclic garbage collector after loading."""

    DEFAULT = "default"
    DISABLED = "disabled"
    FREEZE = "freeze"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Configuration of the llmsys server. Raises :class:`ProbeConfigError` when out of range."""

    prefix_reuse: bool = True
    """Reuse the KV cache of the longest common prompt prefix."""
    prefix_cache_entries: int = 8
    """LRU bound of kept prompt KV caches (>= 1)."""
    threads: int = 1
    """``torch.set_num_threads`` (>= 1)."""
    gc_mode: GcMode = GcMode.DEFAULT
    """``default``, ``disabled`` (gc.disable) or ``freeze`` (gc.freeze after loading)."""
    gc_threshold0: int | None = None
    """First-generation GC threshold (None: Python's default)."""
    max_context_tokens: int = 2048
    """Prompt + generated tokens; longer prompts keep their last tokens (>= 16)."""
    dtype: str = "float32"
    """Weights dtype: ``float32``, ``bfloat16`` or ``float16``."""

    def __post_init__(self) -> None:
        if self.prefix_cache_entries < 1 or self.threads < 1:
            raise ProbeConfigError("prefix_cache_entries and threads must be >= 1")
        if not isinstance(self.gc_mode, GcMode):
            raise ProbeConfigError(f"gc_mode must be a GcMode, not {self.gc_mode!r}")
        if self.gc_threshold0 is not None and self.gc_threshold0 < 1:
            raise ProbeConfigError("gc_threshold0 must be >= 1 or None")
        if self.max_context_tokens < 16:
            raise ProbeConfigError("max_context_tokens must be >= 16")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ProbeConfigError(f"dtype must be float32, bfloat16 or float16, not {self.dtype}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ServerConfig:
        """Build from plain values; unknown keys are an error."""
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ProbeConfigError(f"unknown server option(s) {unknown}")
        fields = dict(values)
        if "gc_mode" in fields and not isinstance(fields["gc_mode"], GcMode):
            try:
                fields["gc_mode"] = GcMode(fields["gc_mode"])
            except ValueError:
                raise ProbeConfigError(f"unknown gc_mode {fields['gc_mode']!r}") from None
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, the inverse of :meth:`from_dict`."""
        out = asdict(self)
        out["gc_mode"] = self.gc_mode.value
        return out


def _common_prefix(a: tuple[int, ...], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class TransformersEngine:
    """Greedy streaming generation with optional prefix-KV reuse (see the module doc)."""

    def __init__(self, config: ServerConfig, bundled: Any) -> None:
        self.config = config
        self.bundled = bundled
        self.model_name = "SmolLM2-135M-Instruct"
        self._lock = threading.Lock()
        self._prefixes: collections.OrderedDict[tuple[int, ...], Any] = collections.OrderedDict()
        self._entries_gauge: Gauge | None = None
        self._tokens_gauge: Gauge | None = None
        self._hits: Counter | None = None

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Add the prefix-cache gauges and hit counter."""
        self._entries_gauge = Gauge(
            "llmsys_prefix_cache_entries", "Kept prompt KV caches", registry=registry
        )
        self._tokens_gauge = Gauge(
            "llmsys_prefix_cache_tokens", "Tokens in kept KV caches", registry=registry
        )
        self._hits = Counter(
            "llmsys_prefix_hit_tokens", "Prompt tokens served from the cache", registry=registry
        )

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """Render messages with the model's chat template, generation prompt appended."""
        text = self.bundled.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return str(text)

    def generate(self, prompt: str, max_tokens: int) -> tuple[int, Iterator[str]]:
        """Tokenize, clip to the context, and return the token stream."""
        ids = [int(t) for t in self.bundled.tokenizer(prompt)["input_ids"]]
        if not ids:
            ids = [int(self.bundled.tokenizer.eos_token_id)]
        keep = max(1, self.config.max_context_tokens - max_tokens)
        ids = ids[-keep:]
        return len(ids), self._decode(ids, max_tokens)

    def _lookup(self, ids: list[int]) -> tuple[Any, int]:
        best_key, best = None, 0
        for key in self._prefixes:
            n = _common_prefix(key, ids)
            if n > best:
                best_key, best = key, n
        best = min(best, len(ids) - 1)  # at least one token must be prefilled for logits
        if best_key is None or best == 0:
            return None, 0
        self._prefixes.move_to_end(best_key)
        cache = copy.deepcopy(self._prefixes[best_key])
        surplus = cache.get_seq_length() - best
        if surplus > 0:
            cache.crop(-surplus)  # transformers 5 crops by a negative count only
        if self._hits is not None:
            self._hits.inc(best)
        return cache, best

    def _store(self, ids: list[int], cache: Any) -> None:
        self._prefixes[tuple(ids)] = copy.deepcopy(cache)
        self._prefixes.move_to_end(tuple(ids))
        while len(self._prefixes) > self.config.prefix_cache_entries:
            self._prefixes.popitem(last=False)
        if self._entries_gauge is not None and self._tokens_gauge is not None:
            self._entries_gauge.set(len(self._prefixes))
            self._tokens_gauge.set(sum(len(k) for k in self._prefixes))

    def _decode(self, ids: list[int], max_tokens: int) -> Iterator[str]:
        import torch
        from transformers import DynamicCache

        tok, model = self.bundled.tokenizer, self.bundled.model
        eos = tok.eos_token_id
        with self._lock, torch.inference_mode():
            cache, start = self._lookup(ids) if self.config.prefix_reuse else (None, 0)
            cache = cache if cache is not None else DynamicCache()
            # The cache object is updated in place (transformers >= 5 names the kwarg
            # ``cache``; ``past_key_values`` is deprecated).
            out = model(torch.tensor([ids[start:]]), cache=cache, use_cache=True)
            if self.config.prefix_reuse:
                self._store(ids, cache)
            new: list[int] = []
            text = ""
            for _ in range(max_tokens):
                nxt = int(out.logits[0, -1].argmax())
                if nxt == eos:
                    return
                new.append(nxt)
                full = tok.decode(new, skip_special_tokens=True)
                piece, text = full[len(text) :], full
                yield piece
                if len(new) == max_tokens:
                    return
                out = model(torch.tensor([[nxt]]), cache=cache, use_cache=True)

    def debug_state(self) -> dict[str, Any]:
        """Configuration and prefix-cache size."""
        return {"config": self.config.to_dict(), "prefix_entries": len(self._prefixes)}


def serve_llmsys(config: ServerConfig, host: str = "127.0.0.1", port: int = 0) -> None:
    """Load the bundled model, apply the config, and serve until stopped (blocking).

    Raises:
        ModelUnavailableError: the bundled model or a package it needs is missing.
        OSError: the port cannot be bound.
    """
    import torch

    from llmsys.core.model import load_bundled_model

    torch.set_num_threads(config.threads)
    bundled = load_bundled_model(config.dtype)
    if config.gc_threshold0 is not None:
        _, g1, g2 = gc.get_threshold()
        gc.set_threshold(config.gc_threshold0, g1, g2)
    if config.gc_mode is GcMode.DISABLED:
        gc.disable()
    elif config.gc_mode is GcMode.FREEZE:
        gc.collect()
        gc.freeze()
    server = OpenAIServer(TransformersEngine(config, bundled), host, port)
    _LOG.info("llmsys server (%s) on %s", config.to_dict(), server.url)
    server.serve_forever()
