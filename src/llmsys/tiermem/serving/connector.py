"""The engine's connection to the tiered store, shaped like vLLM's KV connector contract.

vLLM splits a KV connector in two; so does :class:`TieredKVConnector`, so an adapter for
vLLM is a matter of forwarding calls:

Scheduler side (decides how much is cached and pins it):

- ``get_num_new_matched_tokens(request) -> int`` - tokens of the prompt that the store can
  supply and the runner will use (whole prefill chunks, at most ``len(prompt) - 1`` so one
  token is always computed).
- ``update_state_after_alloc(request, num_tokens)`` - pin those blocks for this request
  (``TieredStore.prepare_load``); from here until ``request_finished`` they cannot be evicted.
- ``request_finished(request)`` - unpin whatever the request still holds.

Worker side (moves bytes):

- ``start_load_kv(request)`` - read the pinned blocks into the engine's block buffers.
- ``wait_for_layer_load(layer) -> (K, V)`` - a layer's KV for the loaded prefix. A block
  holds all layers contiguously (one transfer per block), so the first call waits for the
  whole load and later calls return at once; overlap comes from foresight instead, which
  loads the *next* requests' blocks while this one computes.
- ``save_kv(request, cache, first_block)`` - copy the request's new full blocks out of the
  model's cache (on the caller's thread) and store them on a background thread, so the
  store's copies, demotions and write-through overlap the request's decode.
- ``wait_for_save()`` - wait until every pending save is published (the engine calls it
  before the next request looks up, so hit rates do not depend on timing).
- ``get_finished() -> set[str]`` - requests whose loads and saves are done.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmsys.tiermem.block import aligned_buffer
from llmsys.tiermem.keys import BlockKey, Namespace, PrefixHasher
from llmsys.tiermem.serving.runner import ModelRunner
from llmsys.tiermem.serving.workloads import Request
from llmsys.tiermem.store import LoadHandle, TieredStore
from llmsys.tiermem.tiers.base import TierKind

__all__ = ["LoadedPrefix", "TieredKVConnector"]


@dataclass(slots=True)
class LoadedPrefix:
    """State of one request between the scheduler and worker calls."""

    keys: tuple[BlockKey, ...]
    """Keys of every full block of the prompt."""
    handle: LoadHandle | None = None
    """Pins of the cached prefix (None before ``update_state_after_alloc``)."""
    cache: Any = None
    """The KV cache built from the loaded blocks."""
    loaded_blocks: int = 0
    """Blocks actually read (a corrupt block ends the prefix early)."""
    tiers: tuple[TierKind, ...] = field(default_factory=tuple)
    """Tier each loaded block came from."""


class TieredKVConnector:
    """Scheduler + worker halves of the store connection, for one engine."""

    def __init__(self, store: TieredStore, runner: ModelRunner, namespace: Namespace) -> None:
        """Bind a store and a model runner that share ``namespace``'s block geometry."""
        self.store = store
        self.runner = runner
        self.namespace = namespace
        self._state: dict[str, LoadedPrefix] = {}
        self._finished: set[str] = set()
        self._buffers: list[memoryview] = []
        self._saver = ThreadPoolExecutor(1, thread_name_prefix="itme-save")
        self._pending: list[Future[int]] = []

    def block_keys(self, request: Request) -> tuple[BlockKey, ...]:
        """Keys of the prompt's full blocks (cached per request)."""
        state = self._state.get(request.request_id)
        if state is not None:
            return state.keys
        hasher = PrefixHasher(self.namespace)
        keys = tuple(hasher.extend(request.prompt_ids))
        self._state[request.request_id] = LoadedPrefix(keys=keys)
        return keys

    # -- scheduler side ------------------------------------------------------------------
    def get_num_new_matched_tokens(self, request: Request) -> int:
        """Tokens of ``request``'s prompt the store can supply (whole blocks)."""
        keys = self.block_keys(request)
        usable = (len(request.prompt_ids) - 1) // self.namespace.block_tokens
        hit = self.store.lookup(keys[:usable])
        return self.runner.usable_cached_tokens(
            hit.num_blocks * self.namespace.block_tokens, len(request.prompt_ids)
        )

    def update_state_after_alloc(self, request: Request, num_tokens: int) -> None:
        """Pin the first ``num_tokens // block_tokens`` blocks for ``request``."""
        state = self._state[request.request_id]
        n_blocks = num_tokens // self.namespace.block_tokens
        state.handle = self.store.prepare_load(state.keys[:n_blocks])

    def request_finished(self, request: Request) -> None:
        """Release the request's pins and forget it."""
        state = self._state.pop(request.request_id, None)
        if state is not None and state.handle is not None and not state.handle.completed:
            self.store.complete_load(state.handle)
        self._finished.add(request.request_id)

    # -- worker side ---------------------------------------------------------------------
    def _buffers_for(self, n: int) -> list[memoryview]:
        while len(self._buffers) < n:
            self._buffers.append(aligned_buffer(self.namespace.block_bytes))
        return self._buffers[:n]

    def start_load_kv(self, request: Request) -> LoadedPrefix:
        """Read the pinned prefix into block buffers and build the KV cache from it."""
        state = self._state[request.request_id]
        handle = state.handle
        if handle is None or not handle.keys:
            state.cache = self.runner.empty_cache()
            return state
        outs = self._buffers_for(len(handle.keys))
        loaded = self.store.read(handle, outs)
        state.loaded_blocks = loaded
        state.tiers = handle.tiers[:loaded]
        # cache_from_blocks copies out of the buffers, so they are reusable at once
        state.cache = self.runner.cache_from_blocks(outs[:loaded])
        return state

    def wait_for_layer_load(self, request: Request, layer: int) -> tuple[Any, Any]:
        """Return layer ``layer``'s (K, V) of the loaded prefix (loaded as whole blocks)."""
        cache = self._state[request.request_id].cache
        return cache.layers[layer].keys, cache.layers[layer].values

    def save_kv(self, request: Request, cache: Any, first_block: int) -> None:
        """Start storing the prompt's full blocks from ``first_block`` on (see
        :meth:`wait_for_save`)."""
        keys = self._state[request.request_id].keys
        if first_block >= len(keys):
            return
        blocks = self.runner.blocks_from_cache(cache, first_block, len(keys))
        self._pending.append(self._saver.submit(self._store_blocks, keys, first_block, blocks))

    def _store_blocks(
        self, keys: tuple[BlockKey, ...], first_block: int, blocks: Sequence[np.ndarray]
    ) -> int:
        """Store ``blocks`` (``keys[first_block:]``'s); return how many were new.

        A store handle reserves at most the dram slots that are not pinned, so a prompt
        longer than that is stored in rounds: each round publishes its blocks (which the
        next round may demote to slower tiers) until every block is stored or a round makes
        no progress.
        """
        index = {k: i for i, k in enumerate(keys)}
        stored = 0
        todo = list(keys[first_block:])
        while todo:
            handle = self.store.prepare_store(todo)
            if not handle.keys:
                self.store.complete_store(handle)
                break
            try:
                for key in handle.keys:
                    self.store.write(handle, key, blocks[index[key] - first_block].data)
            except BaseException:
                self.store.complete_store(handle, success=False)
                raise
            self.store.complete_store(handle)
            stored += len(handle.keys)
            done = set(handle.keys)
            todo = [k for k in todo[todo.index(handle.keys[-1]) + 1 :] if k not in done]
        return stored

    def wait_for_save(self) -> int:
        """Wait for every pending save; return how many blocks they stored.

        Raises:
            Exception: whatever a save raised (a store bug, not a tier failure - tiers
            never raise into this path).
        """
        pending, self._pending = self._pending, []
        return sum(f.result() for f in pending)

    def close(self) -> None:
        """Finish pending saves and stop the save thread."""
        self.wait_for_save()
        self._saver.shutdown(wait=True)

    def get_finished(self) -> set[str]:
        """Return and clear the ids of requests finished since the last call."""
        done, self._finished = self._finished, set()
        return done
