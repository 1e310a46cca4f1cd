"""The model side of serving: prefill in fixed block-aligned chunks, decode, and KV <-> blocks.

A block's bytes are the KV of ``block_tokens`` consecutive tokens for all layers, laid out
``[layers, 2 (K then V), kv_heads, block_tokens, head_dim]`` in the model's dtype,
contiguous, so one block is one transfer.

Exactness: prefill always runs in chunks of ``block_tokens`` tokens on the absolute block
grid (block 0, block 1, ..., then the trailing partial block), whether or not a prefix came
from the cache. A block's KV therefore depends only on the tokens up to it, never on serving
history, and KV round-trips through bytes bitwise; so a cached run's logits are bitwise
identical to a recompute run's. ``chunk_blocks`` > 1 groups several blocks per forward
pass (fewer passes, faster prefill); to stay bitwise exact, a cache hit is then used only
up to the last whole chunk (:meth:`ModelRunner.usable_cached_tokens`), so the rest of the
prompt runs on the same chunk boundaries as a recompute. That costs at most
``chunk_blocks - 1`` blocks of recompute per request.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llmsys.core.model import BundledModel
from llmsys.tiermem.errors import TierConfigError

__all__ = ["KvGeometry", "ModelRunner", "PrefillResult"]


@dataclass(frozen=True, slots=True)
class KvGeometry:
    """Shape of one KV block."""

    layers: int
    """Decoder layers."""
    kv_heads: int
    """Key/value heads per layer."""
    head_dim: int
    """Dimension of one head."""
    block_tokens: int
    """Tokens per block."""
    dtype: torch.dtype
    """Element type (the model's own)."""

    @property
    def block_shape(self) -> tuple[int, int, int, int, int]:
        """``[layers, 2, kv_heads, block_tokens, head_dim]``."""
        return (self.layers, 2, self.kv_heads, self.block_tokens, self.head_dim)

    @property
    def block_bytes(self) -> int:
        """Bytes of one block."""
        return int(np.prod(self.block_shape)) * self.dtype.itemsize

    @property
    def bytes_per_token(self) -> int:
        """KV bytes of one token over all layers."""
        return self.block_bytes // self.block_tokens

    @property
    def layout(self) -> str:
        """Layout name recorded in the store namespace."""
        return "layers,kv,heads,tokens,dim"


@dataclass(frozen=True, slots=True)
class PrefillResult:
    """What a prefill produced."""

    cache: Any
    """The ``transformers`` DynamicCache holding every prompt token's KV."""
    last_logits: torch.Tensor
    """``[vocab]`` logits after the last prompt token (float32)."""
    forward_passes: int
    """How many forward passes the prefill took."""


class ModelRunner:
    """Runs the bundled model with block-grid prefill and greedy decode."""

    def __init__(self, bundled: BundledModel, block_tokens: int, chunk_blocks: int = 1) -> None:
        """Raises: TierConfigError: ``block_tokens`` or ``chunk_blocks`` < 1."""
        if block_tokens < 1 or chunk_blocks < 1:
            raise TierConfigError("block_tokens and chunk_blocks must be >= 1")
        cfg = bundled.model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.bundled = bundled
        self.model = bundled.model
        self.chunk_blocks = chunk_blocks
        self.geometry = KvGeometry(
            layers=int(cfg.num_hidden_layers),
            kv_heads=int(cfg.num_key_value_heads),
            head_dim=int(head_dim),
            block_tokens=block_tokens,
            dtype=bundled.dtype,
        )
        self.eos_token_id = bundled.tokenizer.eos_token_id
        self.device = next(self.model.parameters()).device
        """Where the model runs (cpu, or cuda when the caller moved the model there)."""
        # transformers 5 renamed past_key_values to cache; older releases ignore unknown kwargs
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    # -- KV <-> block bytes ---------------------------------------------------------------
    def empty_cache(self) -> Any:
        """Return an empty DynamicCache for this model."""
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def cache_from_blocks(self, blocks: Sequence[memoryview | bytes | np.ndarray]) -> Any:
        """Build a DynamicCache holding ``len(blocks)`` blocks of KV (no copy per layer)."""
        cache = self.empty_cache()
        if not blocks:
            return cache
        g = self.geometry
        parts = [
            torch.from_numpy(np.frombuffer(b, dtype=np.uint8, count=g.block_bytes))
            .view(g.dtype)
            .view(g.block_shape)
            for b in blocks
        ]
        kv = parts[0].clone() if len(parts) == 1 else torch.cat(parts, dim=3)
        kv = kv.to(self.device, non_blocking=True)
        for layer in range(g.layers):
            cache.update(kv[layer, 0].unsqueeze(0), kv[layer, 1].unsqueeze(0), layer)
        return cache

    def blocks_from_cache(self, cache: Any, first_block: int, end_block: int) -> list[np.ndarray]:
        """Return blocks ``[first_block, end_block)`` of ``cache`` as contiguous uint8 arrays."""
        g = self.geometry
        if end_block <= first_block:
            return []
        start, stop = first_block * g.block_tokens, end_block * g.block_tokens
        n = end_block - first_block
        layers = cache.layers
        # One strided copy per layer and K/V straight into the block layout (stacking
        # first and permuting after copied every byte twice).
        out = torch.empty(
            (n, g.layers, 2, g.kv_heads, g.block_tokens, g.head_dim),
            dtype=layers[0].keys.dtype,
            device="cpu",
        )
        for i in range(g.layers):
            for j, t in enumerate((layers[i].keys, layers[i].values)):
                src = t[0, :, start:stop].view(g.kv_heads, n, g.block_tokens, g.head_dim)
                out[:, i, j].copy_(src.transpose(0, 1))
        raw = out.view(n, -1).view(torch.uint8).numpy()  # [n, block_bytes]
        return [raw[i] for i in range(n)]

    # -- compute -------------------------------------------------------------------------
    @property
    def chunk_tokens(self) -> int:
        """Tokens per prefill forward pass (the grid step)."""
        return self.geometry.block_tokens * self.chunk_blocks

    def usable_cached_tokens(self, hit_tokens: int, prompt_tokens: int) -> int:
        """How many of ``hit_tokens`` cached prompt tokens to use: whole chunks only, and
        fewer than ``prompt_tokens`` (one token is always computed, for the logits)."""
        step = self.chunk_tokens
        usable = min(hit_tokens, prompt_tokens - 1)
        return max(0, usable // step * step)

    def prefill(self, prompt_ids: Sequence[int], cache: Any, cached_tokens: int) -> PrefillResult:
        """Prefill ``prompt_ids[cached_tokens:]`` on top of ``cache`` on the block grid.

        ``cached_tokens`` must be a multiple of ``block_tokens`` and less than the prompt
        length (at least one token is computed, for the logits).

        Raises:
            TierConfigError: ``cached_tokens`` breaks those rules.
        """
        b = self.geometry.block_tokens
        n = len(prompt_ids)
        if cached_tokens % b or not 0 <= cached_tokens < n:
            raise TierConfigError(
                f"cached_tokens={cached_tokens} must be a multiple of {b} and < prompt length {n}"
            )
        step = self.chunk_tokens
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.device)
        passes = 0
        pos = cached_tokens
        logits = None
        with torch.inference_mode():
            while pos < n:
                # chunks follow the absolute grid (multiples of step), whatever was cached
                end = min(n, (pos // step + 1) * step)
                out = self.model(
                    input_ids=ids[:, pos:end],
                    **{self._cache_kw: cache},
                    use_cache=True,
                    logits_to_keep=1,
                )
                logits = out.logits[0, -1]
                passes += 1
                pos = end
        assert logits is not None  # n > cached_tokens guarantees one pass
        return PrefillResult(cache=cache, last_logits=logits.float().cpu(), forward_passes=passes)

    def decode(self, cache: Any, first_token: int, max_new_tokens: int) -> list[int]:
        """Greedy-decode after the prefill; ``first_token`` is the argmax of its logits.

        Returns the generated ids, ``first_token`` included, stopping at end-of-sequence.
        """
        out = [first_token]
        token = first_token
        with torch.inference_mode():
            while len(out) < max_new_tokens and token != self.eos_token_id:
                step = self.model(
                    input_ids=torch.tensor([[token]], dtype=torch.long, device=self.device),
                    **{self._cache_kw: cache},
                    use_cache=True,
                )
                token = int(step.logits[0, -1].argmax())
                out.append(token)
        return out
