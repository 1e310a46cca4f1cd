"""A tiered prefix cache for llama-cpp-python: :class:`TieredLlama`.

``Llama.set_cache`` caches (``LlamaRAMCache``, ``LlamaDiskCache``) never see the context, so
they save and load whole engine states. :class:`TieredLlama` is a ``Llama`` subclass that
moves prefix KV through llmsys tiers with llama.cpp's per-sequence state API instead.

Protocol, per ``generate`` call (so ``create_completion`` / ``__call__`` /
``create_chat_completion`` all use it)::

    keys = chain_keys(ns, prompt[: (len(prompt) - 1) // B * B])  # one key per full chunk
    if more of the prompt is cached than the live context already holds:
        h = store.prepare_load(keys); store.read(h, bufs); store.complete_load(h)
        n = codec.valid_prefix(bufs)            # checksums, key, position: corrupt -> miss
        llama_state_seq_set_data(assemble(bufs[:n]))  # one call, seq 0
    ... Llama.generate evaluates only the rest and samples ...
    on generator end/close: new full chunks of the evaluated tokens (prompt and output)
        h = store.prepare_store(keys); codec.encode(llama_state_seq_get_data); write; complete

At least one prompt token is always evaluated, so sampling sees fresh logits. With
``logits_all`` and a call asking for prompt logprobs (``echo`` with ``logprobs``) the
restore is skipped for that call: restored positions have no logits rows.

Keys live in a :class:`~llmsys.tiermem.Namespace` built from the GGUF content hash (or a
caller-given fingerprint), the LoRA adapter, the KV types and context numerics, the
llama.cpp build (python package version, ``llama_version``, state version, a hash of the
shared libraries, CPU features) and the state geometry - chunks never cross any of them.
Chunks are fixed-size (``ChunkCodec.block_bytes``), so they live in any tier.

Errors: ``TierConfigError`` (bad :class:`PrefixCacheConfig`), ``InputError`` (missing model
file, ``set_cache`` on a :class:`TieredLlama`), ``StateFormatError`` (a model whose KV
cache state this code cannot split, e.g. SWA or recurrent: raised at construction).
"""

from __future__ import annotations

import ctypes
import inspect
import logging
import pathlib
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import xxhash
from llama_cpp import Llama
from llama_cpp import __version__ as llama_cpp_python_version
from llama_cpp import llama_cpp as llama_lib

from llmsys.core.errors import InputError
from llmsys.tiermem.errors import TierConfigError, TierMemError
from llmsys.tiermem.keys import Namespace, chain_keys
from llmsys.tiermem.llamacpp_state import (
    ChunkCodec,
    ParsedState,
    StateFormatError,
    StateSkeleton,
    parse_seq_state,
)
from llmsys.tiermem.store import StoreConfig, TieredStore
from llmsys.tiermem.tiers import DramConfig

__all__ = [
    "PrefixCacheConfig",
    "PrefixCacheStats",
    "StateFormatError",
    "TieredLlama",
    "engine_fingerprint",
    "model_fingerprint",
]

log = logging.getLogger(__name__)

_SEQ = 0  # Llama keeps its one sequence in seq 0
_COMPLETION_SIGNATURE = inspect.signature(Llama.create_completion)
_GENERATE_SIGNATURE = inspect.signature(Llama.generate)
_U8P = ctypes.POINTER(ctypes.c_uint8)
_HASH_CHUNK_BYTES = 16 << 20


@dataclass(frozen=True, slots=True)
class PrefixCacheConfig:
    """How :class:`TieredLlama` caches prefixes."""

    block_tokens: int = 32
    """Tokens per cached chunk (>= 1); only full chunks are cached."""
    store: StoreConfig | None = None
    """Tiers to keep chunks in, fastest first; None: 1 GiB of dram."""
    model_fingerprint: str | None = None
    """Identity of the weights; None: xxh3-128 of the GGUF file's bytes."""

    def __post_init__(self) -> None:
        """Raises: TierConfigError: ``block_tokens`` < 1 or a non-StoreConfig ``store``."""
        bt = self.block_tokens
        if isinstance(bt, bool) or not isinstance(bt, int) or bt < 1:
            raise TierConfigError(f"block_tokens must be an int >= 1, got {bt!r}")
        if self.store is not None and not isinstance(self.store, StoreConfig):
            raise TierConfigError(f"store must be a StoreConfig, got {self.store!r}")
        if self.model_fingerprint is not None and not self.model_fingerprint:
            raise TierConfigError("model_fingerprint must be None or a non-empty string")


@dataclass(frozen=True, slots=True)
class PrefixCacheStats:
    """Counters of one :class:`TieredLlama` since construction."""

    lookups: int
    """Prompts looked up (``generate`` calls with ``reset``)."""
    restores: int
    """Lookups that restored a cached prefix into the context."""
    restored_tokens: int
    """Prompt tokens restored instead of evaluated."""
    corrupt_chunks: int
    """Chunks read from a tier that failed verification (treated as misses)."""
    restore_failures: int
    """Assembled states llama.cpp refused (the prompt was then evaluated in full)."""
    stored_chunks: int
    """New chunks written to the store."""
    restore_s: float
    """Seconds spent reading, verifying and restoring chunks."""
    save_s: float
    """Seconds spent extracting and storing chunks."""


@dataclass(slots=True)
class _Counters:
    values: dict[str, float] = field(
        default_factory=lambda: {f.name: 0.0 for f in fields(PrefixCacheStats)}
    )


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def _file_xxh3(path: pathlib.Path) -> str:
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _FILE_HASHES:
        h = xxhash.xxh3_128()
        with path.open("rb") as f:
            while chunk := f.read(_HASH_CHUNK_BYTES):
                h.update(chunk)
        _FILE_HASHES[memo] = h.hexdigest()
    return _FILE_HASHES[memo]


def model_fingerprint(model_path: str | pathlib.Path) -> str:
    """``"gguf-xxh3-128:<hex>"`` of the file's bytes (memoized per path, size and mtime).

    Raises:
        InputError: the file does not exist.
    """
    path = pathlib.Path(model_path)
    if not path.is_file():
        raise InputError(f"model file {path} does not exist")
    return f"gguf-xxh3-128:{_file_xxh3(path)}"


def engine_fingerprint() -> str:
    """Identity of the llama.cpp build this process runs: llama-cpp-python version,
    ``llama_version()``, the sequence-state version, a hash over the loaded shared libraries
    and the CPU features llama.cpp reports."""
    lib_dir = pathlib.Path(llama_lib._lib._name).parent
    libs = sorted(p for p in lib_dir.glob("lib*.so*") if p.is_file() and not p.is_symlink())
    lib_hash = xxhash.xxh3_64()
    for lib in libs:
        lib_hash.update(lib.name.encode() + b"\0" + _file_xxh3(lib).encode())
    parts = [
        f"llama-cpp-python={llama_cpp_python_version}",
        f"llama.cpp={llama_lib.llama_version().decode(errors='replace')}",
        f"state_seq_v={llama_lib.LLAMA_STATE_SEQ_VERSION}",
        f"libs={lib_hash.hexdigest()}",
        f"cpu={xxhash.xxh3_64_hexdigest(llama_lib.llama_print_system_info())}",
    ]
    return ";".join(parts)


class TieredLlama(Llama):
    """``Llama`` whose prompts reuse prefix KV cached in llmsys tiers (see module doc).

    Takes every ``Llama`` argument plus ``prefix_cache``. Owns its :class:`TieredStore`
    (``self.store``), closed by :meth:`close`.
    """

    def __init__(
        self, model_path: str, *, prefix_cache: PrefixCacheConfig | None = None, **kwargs: Any
    ) -> None:
        """Raises:
        InputError: ``model_path`` is not a file.
        TierConfigError: bad ``prefix_cache`` or store configuration.
        StateFormatError: the model's KV state cannot be split into chunks.
        """
        config = prefix_cache if prefix_cache is not None else PrefixCacheConfig()
        if not isinstance(config, PrefixCacheConfig):
            raise TierConfigError(f"prefix_cache must be a PrefixCacheConfig, got {config!r}")
        fingerprint = config.model_fingerprint or model_fingerprint(model_path)
        self._prefix_ready = False
        self._state_buf = np.empty(0, dtype=np.uint8)
        super().__init__(model_path=model_path, **kwargs)
        self.prefix_config = config
        skeleton = self._probe_skeleton()
        self.codec = ChunkCodec(skeleton, config.block_tokens)
        self.namespace = Namespace(
            model_fingerprint=f"{fingerprint};lora={self.lora_path}@{self.lora_scale}",
            kv_dtype=f"k{self.context_params.type_k},v{self.context_params.type_v}",
            layout=f"llama.cpp-seq-state;{engine_fingerprint()};{_numerics(self)};"
            f"geometry={skeleton.digest()}",
            block_tokens=config.block_tokens,
            block_bytes=self.codec.block_bytes,
        )
        store_config = config.store or StoreConfig(tiers=(DramConfig(capacity_bytes=1 << 30),))
        self.store = TieredStore(self.namespace, store_config)
        self._counters = _Counters()
        self._skip_restore_once = False
        self._saving = False
        self._prefix_ready = True

    # ---- public ----------------------------------------------------------------------

    def prefix_stats(self) -> PrefixCacheStats:
        """Snapshot of the prefix-cache counters."""
        v = self._counters.values
        return PrefixCacheStats(
            lookups=int(v["lookups"]),
            restores=int(v["restores"]),
            restored_tokens=int(v["restored_tokens"]),
            corrupt_chunks=int(v["corrupt_chunks"]),
            restore_failures=int(v["restore_failures"]),
            stored_chunks=int(v["stored_chunks"]),
            restore_s=v["restore_s"],
            save_s=v["save_s"],
        )

    def set_cache(self, cache: Any) -> None:
        """Refuse a second, whole-state cache (``None`` is accepted and changes nothing).

        Raises:
            InputError: ``cache`` is not None.
        """
        if cache is not None:
            raise InputError("TieredLlama caches prefixes itself; set_cache() is not supported")
        self.cache = None

    def create_completion(self, prompt: Any, *args: Any, **kwargs: Any) -> Any:
        """``Llama.create_completion``; the prefix cache is used unless the call needs
        prompt logits (``echo`` with ``logprobs``)."""
        bound = _COMPLETION_SIGNATURE.bind(self, prompt, *args, **kwargs).arguments
        self._skip_restore_once = bool(bound.get("echo")) and bound.get("logprobs") is not None
        return super().create_completion(prompt, *args, **kwargs)

    def generate(  # type: ignore[override]
        self, tokens: Sequence[int], *args: Any, **kwargs: Any
    ) -> Generator[int, Sequence[int] | None, None]:
        """``Llama.generate`` that first restores the longest cached prefix of ``tokens``
        and, when the generator ends or is closed, stores the new full chunks."""
        tokens = [int(t) for t in tokens]
        reset = _GENERATE_SIGNATURE.bind(self, tokens, *args, **kwargs).arguments.get("reset")
        skip, self._skip_restore_once = self._skip_restore_once, False
        if (reset is None or reset) and not skip:
            self._restore_prefix(tokens)
        return self._save_after(super().generate(tokens, *args, **kwargs))

    def close(self) -> None:
        """Free the model and close the store."""
        store = getattr(self, "store", None)
        if store is not None:
            store.close()
            self.store = None  # type: ignore[assignment]
        super().close()

    # ---- restore ---------------------------------------------------------------------

    def _restore_prefix(self, tokens: list[int]) -> None:
        b = self.prefix_config.block_tokens
        max_chunks = (len(tokens) - 1) // b
        live = self.longest_token_prefix(self._input_ids.tolist(), tokens) if self.n_tokens else 0
        if max_chunks < 1 or max_chunks * b <= live or max_chunks * b > self._n_ctx:
            return
        self._counters.values["lookups"] += 1
        keys = chain_keys(self.namespace, np.asarray(tokens[: max_chunks * b], dtype=np.int64))
        if self.store.lookup(keys).num_blocks * b <= live:
            return
        start = time.perf_counter()
        handle = self.store.prepare_load(keys)
        chunks = np.empty((len(handle.keys), self.codec.block_bytes), dtype=np.uint8)
        try:
            n_read = self.store.read(handle, [row.data for row in chunks])
        finally:
            self.store.complete_load(handle)
        n_ok = self.codec.valid_prefix(chunks[:n_read], keys)
        if n_ok < n_read:
            self._counters.values["corrupt_chunks"] += 1
            log.warning("cached chunk %d of a prefix failed verification: recomputing", n_ok)
        if n_ok * b > live:
            state = self.codec.assemble(chunks[:n_ok])
            self._ctx.kv_cache_seq_rm(-1, 0, -1)
            got = llama_lib.llama_state_seq_set_data(
                self.ctx, state.ctypes.data_as(_U8P), state.size, _SEQ
            )
            if got == state.size:
                m = n_ok * b
                self.input_ids[:m] = tokens[:m]
                self.n_tokens = m
                self._requires_eval = True
                self._counters.values["restores"] += 1
                self._counters.values["restored_tokens"] += m
            else:
                self._counters.values["restore_failures"] += 1
                log.warning("llama.cpp refused a %d-byte prefix state", state.size)
                self.reset()
                self._ctx.kv_cache_seq_rm(-1, 0, -1)
        self._counters.values["restore_s"] += time.perf_counter() - start

    # ---- store -----------------------------------------------------------------------

    def _save_after(
        self, inner: Generator[int, Sequence[int] | None, None]
    ) -> Generator[int, Sequence[int] | None, None]:
        try:
            yield from inner
        finally:
            if self._prefix_ready and self.store is not None:
                self._save_prefix()

    def _save_prefix(self) -> None:
        if self._saving:  # a generator closed by GC while another save runs
            return
        self._saving = True
        try:
            self._store_new_chunks()
        except TierMemError:  # the cache is best-effort: log, never fail the completion
            log.exception("storing prefix chunks failed")
        finally:
            self._saving = False

    def _store_new_chunks(self) -> None:
        b = self.prefix_config.block_tokens
        n_chunks = min(self.n_tokens, self._n_ctx) // b
        if n_chunks == 0:
            return
        start = time.perf_counter()
        tokens = np.asarray(self.input_ids[: n_chunks * b], dtype=np.int64)
        keys = chain_keys(self.namespace, tokens)
        if self.store.lookup(keys).num_blocks == n_chunks:
            return
        index = {key: i for i, key in enumerate(keys)}
        state: np.ndarray | None = None
        parsed: ParsedState | None = None
        todo = list(keys)
        try:
            # a handle reserves at most dram's free slots: store in rounds, each key once
            while todo:
                handle = self.store.prepare_store(todo)
                if not handle.keys:
                    self.store.complete_store(handle, success=False)
                    break
                done = set(handle.keys)
                todo = [k for k in todo if k not in done]
                ok = False
                try:
                    if state is None or parsed is None:
                        state = self._read_seq_state()
                        parsed = parse_seq_state(state)
                    rows = np.empty((len(handle.keys), self.codec.block_bytes), dtype=np.uint8)
                    chunk_ids = [index[k] for k in handle.keys]
                    self.codec.encode(state, parsed, chunk_ids, handle.keys, rows)
                    for key, row in zip(handle.keys, rows, strict=True):
                        self.store.write(handle, key, row.data)
                    ok = True
                finally:
                    self.store.complete_store(handle, success=ok)
                self._counters.values["stored_chunks"] += len(handle.keys)
        finally:
            self._counters.values["save_s"] += time.perf_counter() - start

    def _read_seq_state(self) -> np.ndarray:
        size = int(llama_lib.llama_state_seq_get_size(self.ctx, _SEQ))
        if self._state_buf.size < size:
            self._state_buf = np.empty(size, dtype=np.uint8)
        got = int(
            llama_lib.llama_state_seq_get_data(
                self.ctx, self._state_buf.ctypes.data_as(_U8P), size, _SEQ
            )
        )
        if got != size:
            raise StateFormatError(f"llama.cpp wrote {got} of {size} sequence-state bytes")
        return self._state_buf[:size]

    def _probe_skeleton(self) -> StateSkeleton:
        """Evaluate one token to learn the state geometry, then clear the context."""
        bos = self.token_bos()
        try:
            self.reset()
            self.eval([bos if bos >= 0 else 0])
            skeleton = parse_seq_state(self._read_seq_state()).skeleton
        finally:
            self.reset()
            self._ctx.kv_cache_seq_rm(-1, 0, -1)
        return skeleton


def _numerics(llm: Llama) -> str:
    """Context settings that change KV bytes (RoPE, attention kind, SWA handling)."""
    p = llm.context_params
    fields = (
        "rope_scaling_type",
        "rope_freq_base",
        "rope_freq_scale",
        "yarn_ext_factor",
        "yarn_attn_factor",
        "yarn_beta_fast",
        "yarn_beta_slow",
        "yarn_orig_ctx",
        "flash_attn_type",
        "swa_full",
        "kv_unified",
        "embeddings",
        "attention_type",
    )
    return ",".join(f"{name}={getattr(p, name, None)}" for name in fields)
