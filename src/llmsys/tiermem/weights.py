"""Layer-ahead weight streaming: run a model whose decoder-layer weights live in a lower tier.

Protocol
========
Weights are read layer by layer in a fixed order, so the next layers can be fetched while
the current one computes (the ITME paper's second deterministic stream)::

    layouts = layer_layouts(model)                  # fixed per-layer byte layout
    config = WeightStreamConfig(tier=TierKind.CXL, window_layers=3)
    with WeightStreamer(model, config) as streamer:  # serialise + put every layer, once
        logits = streamer.model(input_ids).logits   # a skeleton sharing embeddings / head
        stats = streamer.stats()                    # peak resident bytes, waits, fetches

- **Block per layer.** Decoder layer ``i``'s parameters are packed into one contiguous
  block (:class:`LayerLayout` in :mod:`.weights_layout`: name, shape, dtype, 64-byte
  aligned offset) and
  ``put`` into one tier (``cxl`` or ``ssd``) under a key derived from the model
  fingerprint and ``i``. All blocks share the largest layer's size (a tier has one block
  size); smaller layers are zero-padded.
- **Skeleton.** :attr:`WeightStreamer.model` is a copy of the module tree whose decoder-layer
  parameters are empty placeholders; embeddings, final norm and LM head are *shared* with
  the source model (always resident, reported as ``pinned_weight_bytes``).
- **Window.** A pool of ``window_layers`` page-aligned buffers of ``block_bytes`` is the only
  memory that ever holds layer weights. A buffer is *checked out* from the moment a fetch
  into it is submitted until the layer that used it finishes; resident weight bytes are the
  checked-out bytes, never more than ``window_layers * block_bytes``.
- **Hooks.** A forward pre-hook on layer ``i`` makes sure layers ``i .. i+window-1``
  (modulo the layer count, so the next forward's first layers arrive during this forward's
  last ones) are submitted to one background fetch thread, waits for layer ``i``, and
  points its parameters at views of the buffer (no copy). A forward hook points them back
  at the placeholders and returns the buffer to the pool. The fetch thread runs
  ``Tier.get_into`` - O_DIRECT ``preadv``, or ``np.copyto`` plus paced sleep for emulated
  cxl, then an xxh3 check: all release the GIL, as torch's kernels do, so fetch and compute
  overlap. What overlap cannot hide is the fetch's own CPU time on a machine with no idle
  core; :attr:`WeightStreamStats.fetch_cpu_s` measures it.
- **On demand** (:attr:`StreamMode.ON_DEMAND`, the no-look-ahead baseline): one buffer,
  layer ``i`` read synchronously in its pre-hook.

Outputs are bitwise identical to the resident model: the same bytes, shapes and strides go
through the same kernels (``tests/tiermem/test_weights_stream.py`` checks ``torch.equal``).

Errors
======
::

    TierMemError
    ├── TierConfigError (ConfigError)  window_layers < 1, a tier other than cxl / ssd,
    │                                  ssd without a directory, a model with no layers
    └── TierUnavailableError (ResourceError)
        └── WeightFetchError              a layer block missing or corrupt in the tier
"""

from __future__ import annotations

import copy
import enum
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
import xxhash

from llmsys.tiermem.block import aligned_buffer, round_up
from llmsys.tiermem.clock import MonotonicClock
from llmsys.tiermem.errors import TierConfigError, TierUnavailableError
from llmsys.tiermem.keys import BlockKey, Namespace
from llmsys.tiermem.tiers import CxlConfig, SsdConfig, Tier, TierKind, open_tier
from llmsys.tiermem.weights_layout import (
    LayerLayout,
    TensorSlot,
    decoder_layers,
    layer_layouts,
    pack_layer,
)

__all__ = [
    "LayerLayout",
    "StreamMode",
    "TensorSlot",
    "WeightFetchError",
    "WeightStreamConfig",
    "WeightStreamStats",
    "WeightStreamer",
    "layer_layouts",
    "pack_layer",
]

log = logging.getLogger(__name__)


class WeightFetchError(TierUnavailableError):
    """A layer's weight block was missing or failed verification in its tier."""


class StreamMode(enum.Enum):
    """How layer weights reach the skeleton."""

    LAYER_AHEAD = "layer-ahead"
    """Background fetch of the next ``window_layers - 1`` layers while one computes."""
    ON_DEMAND = "on-demand"
    """Read layer ``i`` when it is needed, in the calling thread (no look-ahead)."""


@dataclass(frozen=True, slots=True)
class WeightStreamConfig:
    """Where the layer blocks live and how many may be resident."""

    tier: TierKind = TierKind.CXL
    """Tier that holds the layer blocks: ``CXL`` (emulated pacing here) or ``SSD``."""
    window_layers: int = 3
    """Layer buffers resident at once (>= 1); layer-ahead fetches ``window_layers - 1``
    layers ahead, so 1 streams nothing ahead."""
    mode: StreamMode = StreamMode.LAYER_AHEAD
    """Layer-ahead streaming or on-demand loading."""
    ssd_directory: Path | None = None
    """Directory of the ssd tier's slot file (required for ``SSD``)."""
    cxl_bandwidth_bytes_per_s: float | None = None
    """Emulated cxl bandwidth (None: the tier's default, memcpy x 1/10)."""

    def __post_init__(self) -> None:
        """Raises: TierConfigError: bad window, tier, mode or missing ssd directory."""
        if not isinstance(self.tier, TierKind) or self.tier not in (TierKind.CXL, TierKind.SSD):
            raise TierConfigError(f"weights stream from the cxl or ssd tier, not {self.tier!r}")
        if isinstance(self.window_layers, bool) or not isinstance(self.window_layers, int):
            raise TierConfigError(f"window_layers must be an int, got {self.window_layers!r}")
        if self.window_layers < 1:
            raise TierConfigError(f"window_layers must be >= 1, got {self.window_layers}")
        if not isinstance(self.mode, StreamMode):
            raise TierConfigError(f"mode must be a StreamMode, got {self.mode!r}")
        if self.tier is TierKind.SSD and self.ssd_directory is None:
            raise TierConfigError("the ssd tier needs ssd_directory")


@dataclass(frozen=True, slots=True)
class WeightStreamStats:
    """Counters of a :class:`WeightStreamer` since it opened (or since ``reset_stats``)."""

    block_bytes: int
    """Bytes of one layer block (the largest layer, page-rounded)."""
    window_bytes: int
    """The configured bound: ``window_layers * block_bytes``."""
    resident_weight_bytes_peak: int
    """Most layer-buffer bytes checked out at once (filling or in use)."""
    pinned_weight_bytes: int
    """Non-layer weights always resident (embeddings, final norm, LM head; shared)."""
    layers_fetched: int
    """Layer blocks read from the tier."""
    fetch_s: float
    """Seconds spent reading blocks (in whichever thread read them)."""
    fetch_cpu_s: float
    """CPU seconds those reads used (``time.thread_time``): copies, checksums, syscalls.
    Overlap hides only the rest - on a machine with no idle core the CPU part still costs."""
    wait_s: float
    """Seconds the forward pass waited for a layer's block."""


@dataclass(slots=True)
class _Pending:
    """A layer whose block is being read (or was read) into ``buffer``."""

    buffer: memoryview
    future: Future[float] | None = None


class WeightStreamer:
    """Runs a skeleton of ``model`` whose layer weights stream from a tier; see module doc.

    The source model is not modified. Not thread-safe: one forward at a time.
    """

    def __init__(self, model: Any, config: WeightStreamConfig, fingerprint: str = "model") -> None:
        """Serialise every decoder layer of ``model`` into the configured tier.

        Raises:
            TierConfigError: bad config or a model without decoder layers.
            TierUnavailableError: the tier's backing resource cannot be opened.
        """
        self.config = config
        source_layers = decoder_layers(model)
        self.layouts = layer_layouts(model)
        self.num_layers = len(self.layouts)
        self.block_bytes = round_up(max(lay.payload_bytes for lay in self.layouts))
        self.window = 1 if config.mode is StreamMode.ON_DEMAND else config.window_layers
        ns = Namespace(fingerprint, "weights", "layer-params-v1", 1, self.block_bytes)
        self._keys = [
            BlockKey(ns.id_bytes + xxhash.xxh3_128_digest(ns.root_digest + i.to_bytes(4, "little")))
            for i in range(self.num_layers)
        ]
        capacity = self.num_layers * self.block_bytes
        tier_config: CxlConfig | SsdConfig
        if config.tier is TierKind.CXL:
            tier_config = CxlConfig(
                capacity, bandwidth_bytes_per_s=config.cxl_bandwidth_bytes_per_s
            )
        else:
            assert config.ssd_directory is not None
            tier_config = SsdConfig(config.ssd_directory, capacity, io_threads=1)
        self.tier: Tier = open_tier(
            tier_config, block_bytes=self.block_bytes, clock=MonotonicClock()
        )
        try:
            staging = aligned_buffer(self.block_bytes)
            for i, layer in enumerate(source_layers):
                self.tier.delete(self._keys[i])  # an ssd slot file may hold a stale copy
                pack_layer(layer, self.layouts[i], staging)
                if not self.tier.put(self._keys[i], staging):
                    raise WeightFetchError(f"could not store layer {i} in the {tier_config}")
            self.model = self._skeleton(model)
            log.debug(
                "stored %d layer blocks of %d B in the %s tier",
                self.num_layers,
                self.block_bytes,
                config.tier.value,
            )
        except BaseException:
            self.tier.close()
            raise
        self.pinned_weight_bytes = sum(
            p.numel() * p.element_size()
            for name, p in model.named_parameters(remove_duplicate=True)
            if not name.startswith("model.layers.")
        )
        self._free: list[memoryview] = []
        self._allocated = 0
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._resident = 0
        self._peak = self._fetched = 0
        self._fetch_s = self._fetch_cpu_s = self._wait_s = 0.0
        self._pool = (
            ThreadPoolExecutor(1, thread_name_prefix="itme-weights")
            if config.mode is StreamMode.LAYER_AHEAD
            else None
        )
        self._placeholder = torch.empty(0, dtype=next(model.parameters()).dtype)
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        for i, layer in enumerate(decoder_layers(self.model)):
            self._hooks.append(layer.register_forward_pre_hook(self._make_pre_hook(i)))
            self._hooks.append(layer.register_forward_hook(self._make_post_hook(i)))
        self.reset_stats()

    # ---- skeleton -------------------------------------------------------------------

    def _skeleton(self, model: Any) -> Any:
        """Deep-copy ``model`` sharing its non-layer parameters, with empty layer params."""
        memo: dict[int, Any] = {}
        layer_params = {id(p) for p in decoder_layers(model).parameters()}
        for param in model.parameters():
            if id(param) in layer_params:
                memo[id(param)] = torch.nn.Parameter(torch.empty(0, dtype=param.dtype), False)
            else:
                memo[id(param)] = param
        return copy.deepcopy(model, memo)

    # ---- buffers and fetches --------------------------------------------------------

    def _checkout(self) -> memoryview:
        with self._lock:
            if self._free:
                buf = self._free.pop()
            elif self._allocated < self.window:
                self._allocated += 1
                buf = aligned_buffer(self.block_bytes)
            else:  # the hooks never submit more than the window; a bug if this fires
                raise RuntimeError("weight window exhausted")
            self._resident += self.block_bytes
            self._peak = max(self._peak, self._resident)
            return buf

    def _checkin(self, buf: memoryview) -> None:
        with self._lock:
            self._free.append(buf)
            self._resident -= self.block_bytes

    def _read(self, index: int, buf: memoryview) -> float:
        start, start_cpu = time.perf_counter(), time.thread_time()
        if self.tier.get_into(self._keys[index], buf) is None:
            raise WeightFetchError(f"layer {index} weights missing or corrupt in the tier")
        elapsed = time.perf_counter() - start
        with self._lock:
            self._fetched += 1
            self._fetch_s += elapsed
            self._fetch_cpu_s += time.thread_time() - start_cpu
        return elapsed

    def _submit(self, index: int) -> None:
        if index in self._pending:
            return
        pending = _Pending(self._checkout())
        if self._pool is None:  # on demand: the forward waits for the whole read
            try:
                self._wait_s += self._read(index, pending.buffer)
            except BaseException:
                self._checkin(pending.buffer)
                raise
        else:
            pending.future = self._pool.submit(self._read, index, pending.buffer)
        self._pending[index] = pending

    def _window_ahead(self, index: int) -> list[int]:
        return [(index + k) % self.num_layers for k in range(self.window)]

    def _make_pre_hook(self, index: int) -> Any:
        def pre_hook(module: torch.nn.Module, args: Any) -> None:
            window = self._window_ahead(index)
            if any(i not in window for i in self._pending):
                self._drop_stale(window)
            for ahead in window:
                self._submit(ahead)
            pending = self._pending[index]
            if pending.future is not None:
                start = time.perf_counter()
                try:
                    pending.future.result()
                except BaseException:
                    del self._pending[index]
                    self._checkin(pending.buffer)
                    raise
                self._wait_s += time.perf_counter() - start
                pending.future = None
            self._install(module, index, pending)

        return pre_hook

    def _make_post_hook(self, index: int) -> Any:
        def post_hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            params = dict(module.named_parameters())
            for slot in self.layouts[index].tensors:
                params[slot.name].data = self._placeholder
            pending = self._pending.pop(index)
            self._checkin(pending.buffer)
            if self._pool is not None:  # start the next fetch now, not at the next hook
                self._submit((index + self.window) % self.num_layers)

        return post_hook

    def _drop_stale(self, window: list[int]) -> None:
        """Release fetches left over by a forward that raised half-way."""
        layers = decoder_layers(self.model)
        for index in [i for i in self._pending if i not in window]:
            pending = self._pending.pop(index)
            if pending.future is not None:
                pending.future.exception()  # wait; its error belonged to the failed forward
            for param in layers[index].parameters():
                param.data = self._placeholder
            self._checkin(pending.buffer)

    def _install(self, module: torch.nn.Module, index: int, pending: _Pending) -> None:
        params = dict(module.named_parameters())
        for slot in self.layouts[index].tensors:
            flat = torch.frombuffer(
                pending.buffer,
                dtype=slot.dtype,
                count=slot.nbytes // slot.dtype.itemsize,
                offset=slot.offset_bytes,
            )
            params[slot.name].data = flat.view(slot.shape)

    # ---- stats and lifetime ----------------------------------------------------------

    def reset_stats(self) -> None:
        """Zero the counters (the peak restarts from what is resident now)."""
        with self._lock:
            self._peak = self._resident
            self._fetched = 0
            self._fetch_s = self._fetch_cpu_s = self._wait_s = 0.0

    def stats(self) -> WeightStreamStats:
        """Return a snapshot of the counters."""
        with self._lock:
            return WeightStreamStats(
                block_bytes=self.block_bytes,
                window_bytes=self.window * self.block_bytes,
                resident_weight_bytes_peak=self._peak,
                pinned_weight_bytes=self.pinned_weight_bytes,
                layers_fetched=self._fetched,
                fetch_s=self._fetch_s,
                fetch_cpu_s=self._fetch_cpu_s,
                wait_s=self._wait_s,
            )

    def describe(self) -> dict[str, Any]:
        """JSON-able description: mode, window, block size and the tier's backend."""
        return {
            "mode": self.config.mode.value,
            "window_layers": self.window,
            "block_bytes": self.block_bytes,
            "num_layers": self.num_layers,
            "tier": self.tier.describe(),
        }

    def close(self) -> None:
        """Finish in-flight fetches, drop hooks and buffers, close the tier."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for pending in self._pending.values():
            self._checkin(pending.buffer)
        self._pending.clear()
        self._free.clear()
        self.tier.close()

    def __enter__(self) -> WeightStreamer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
