"""The fixed byte layout of one decoder layer's weights as one contiguous block.

A layer's parameters, in ``named_parameters`` order, each at a ``TENSOR_ALIGN_BYTES``-aligned
offset; padding is zero so equal weights give equal bytes (and equal checksums). The layout
depends only on names, shapes and dtypes, so it is computed from the model once and a
block's bytes are viewed back as tensors with no copy
(:class:`~llmsys.tiermem.weights.WeightStreamer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llmsys.tiermem.block import round_up
from llmsys.tiermem.errors import TierConfigError

__all__ = [
    "TENSOR_ALIGN_BYTES",
    "LayerLayout",
    "TensorSlot",
    "decoder_layers",
    "layer_layouts",
    "pack_layer",
]

TENSOR_ALIGN_BYTES = 64
"""Alignment of every tensor inside a layer block (a cache line, as torch allocates)."""


@dataclass(frozen=True, slots=True)
class TensorSlot:
    """Where one parameter lives inside its layer block."""

    name: str
    """Parameter name relative to the layer (e.g. ``self_attn.q_proj.weight``)."""
    shape: tuple[int, ...]
    """Tensor shape."""
    dtype: torch.dtype
    """Element type."""
    offset_bytes: int
    """Byte offset in the block (a multiple of ``TENSOR_ALIGN_BYTES``)."""
    nbytes: int
    """Bytes of the tensor."""


@dataclass(frozen=True, slots=True)
class LayerLayout:
    """The fixed byte layout of one decoder layer's block."""

    tensors: tuple[TensorSlot, ...]
    """Every parameter, in ``named_parameters`` order."""
    payload_bytes: int
    """Bytes used by the tensors and their alignment padding."""


def decoder_layers(model: Any) -> Any:
    """Return ``model.model.layers`` (a Hugging Face decoder stack).

    Raises:
        TierConfigError: the model has no decoder layers there.
    """
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or len(layers) == 0:
        raise TierConfigError("model has no decoder layers at model.model.layers")
    return layers


def layer_layouts(model: Any) -> list[LayerLayout]:
    """Return the block layout of each decoder layer of ``model`` (``model.model.layers``).

    Raises:
        TierConfigError: the model has no decoder layers.
    """
    layouts = []
    for layer in decoder_layers(model):
        offset = 0
        slots = []
        for name, param in layer.named_parameters():
            nbytes = param.numel() * param.element_size()
            slots.append(TensorSlot(name, tuple(param.shape), param.dtype, offset, nbytes))
            offset = round_up(offset + nbytes, TENSOR_ALIGN_BYTES)
        layouts.append(LayerLayout(tuple(slots), offset))
    return layouts


def pack_layer(layer: torch.nn.Module, layout: LayerLayout, out: memoryview) -> None:
    """Copy ``layer``'s parameters into ``out`` (``[block_bytes]``) as ``layout`` says.

    Padding bytes are zeroed so equal weights give equal blocks (and checksums).
    """
    dst = np.frombuffer(out, dtype=np.uint8)
    dst[:] = 0
    params = dict(layer.named_parameters())
    for slot in layout.tensors:
        src = params[slot.name].detach().contiguous().view(torch.uint8).reshape(-1).numpy()
        dst[slot.offset_bytes : slot.offset_bytes + slot.nbytes] = src
