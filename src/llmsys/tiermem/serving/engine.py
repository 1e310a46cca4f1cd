"""The serving engine: a closed-loop request queue over the model runner and the store.

For each request, in queue order: ask the connector how much of the prompt is cached, pin
and load those blocks into the model's KV cache, prefill only the rest (on the block grid,
see :mod:`~llmsys.tiermem.serving.runner`), decode greedily, and store the prompt's new full
blocks. With a :class:`~llmsys.tiermem.serving.foresight.ForesightPrefetcher` the engine
tells it the queue before each request runs, so the next requests' blocks climb the tiers
while this one computes.

Time to first token (TTFT) runs from the moment the engine starts a request (lookup) to
the first generated token; throughput is requests / wall time of the whole queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from llmsys.tiermem.serving.connector import TieredKVConnector
from llmsys.tiermem.serving.foresight import ForesightPrefetcher
from llmsys.tiermem.serving.runner import ModelRunner
from llmsys.tiermem.serving.workloads import Request
from llmsys.tiermem.store import LoadHandle
from llmsys.tiermem.tiers.base import TierKind

__all__ = ["RequestResult", "ServeResult", "ServingEngine"]


@dataclass(frozen=True, slots=True)
class RequestResult:
    """Outcome of one request."""

    request_id: str
    """Which request."""
    output_ids: tuple[int, ...]
    """Generated token ids (greedy)."""
    ttft_s: float
    """Start of the request to its first token."""
    e2e_s: float
    """Start of the request to its last token."""
    prompt_tokens: int
    """Prompt length."""
    cached_tokens: int
    """Prompt tokens whose KV came from the store."""
    hit_tiers: tuple[TierKind, ...]
    """Tier of each loaded block at the moment it was pinned."""
    first_logits: torch.Tensor | None
    """``[vocab]`` float32 logits of the first generated token (when recorded)."""


@dataclass(slots=True)
class ServeResult:
    """Outcome of serving a queue."""

    results: list[RequestResult]
    """Per request, in queue order."""
    wall_s: float
    """Wall time of the whole queue."""
    extra: dict[str, float] = field(default_factory=dict)
    """Counters from the connector and prefetcher."""

    @property
    def throughput_rps(self) -> float:
        """Requests per second."""
        return len(self.results) / self.wall_s if self.wall_s > 0 else 0.0


class ServingEngine:
    """Serves requests back to back with an optional tiered KV store and foresight."""

    def __init__(
        self,
        runner: ModelRunner,
        connector: TieredKVConnector | None = None,
        prefetcher: ForesightPrefetcher | None = None,
        *,
        record_logits: bool = False,
    ) -> None:
        """``connector=None`` serves without a cache (the recompute configuration).

        Raises:
            ValueError: a prefetcher without a connector.
        """
        if prefetcher is not None and connector is None:
            raise ValueError("foresight prefetch needs a connector (a store)")
        self.runner = runner
        self.connector = connector
        self.prefetcher = prefetcher
        self.record_logits = record_logits

    def serve(
        self, requests: Sequence[Request], progress: Callable[[int], None] | None = None
    ) -> ServeResult:
        """Serve ``requests`` in order, closed loop; ``progress(i)`` after each one."""
        results: list[RequestResult] = []
        started = time.perf_counter()
        for i, request in enumerate(requests):
            foresight_pins = None
            if self.prefetcher is not None and self.connector is not None:
                # take this request's plan first: planning the next window would otherwise
                # cancel it as no longer upcoming
                foresight_pins = self.prefetcher.take(request.request_id)
                upcoming = requests[i + 1 : i + 1 + self.prefetcher.lookahead]
                self.prefetcher.plan(
                    [(r.request_id, self.connector.block_keys(r)) for r in upcoming]
                )
            results.append(self._serve_one(request, foresight_pins))
            if progress is not None:
                progress(i + 1)
        wall = time.perf_counter() - started
        return ServeResult(results=results, wall_s=wall)

    def _serve_one(self, request: Request, foresight_pins: LoadHandle | None) -> RequestResult:
        t0 = time.perf_counter()
        conn = self.connector
        cached_tokens = 0
        tiers: tuple[TierKind, ...] = ()
        if conn is None:
            cache = self.runner.empty_cache()
        else:
            matched = conn.get_num_new_matched_tokens(request)
            conn.update_state_after_alloc(request, matched)
            if foresight_pins is not None:  # our own pins now hold the blocks
                conn.store.complete_load(foresight_pins)
            state = conn.start_load_kv(request)
            cache = state.cache
            # a corrupt block can end the prefix mid-chunk: keep the chunk grid
            loaded_tokens = state.loaded_blocks * self.runner.geometry.block_tokens
            cached_tokens = self.runner.usable_cached_tokens(loaded_tokens, len(request.prompt_ids))
            if cached_tokens < loaded_tokens:
                cache.crop(cached_tokens)
            tiers = state.tiers[: cached_tokens // self.runner.geometry.block_tokens]
        prefill = self.runner.prefill(request.prompt_ids, cache, cached_tokens)
        first = int(prefill.last_logits.argmax())
        ttft = time.perf_counter() - t0
        if conn is not None:  # the prompt's KV is complete: store it while decoding
            conn.save_kv(request, prefill.cache, cached_tokens // self.runner.geometry.block_tokens)
        output = self.runner.decode(prefill.cache, first, request.max_new_tokens)
        if conn is not None:
            conn.wait_for_save()
            conn.request_finished(request)
        e2e = time.perf_counter() - t0
        return RequestResult(
            request_id=request.request_id,
            output_ids=tuple(output),
            ttft_s=ttft,
            e2e_s=e2e,
            prompt_tokens=len(request.prompt_ids),
            cached_tokens=cached_tokens,
            hit_tiers=tiers,
            first_logits=prefill.last_logits.clone() if self.record_logits else None,
        )
