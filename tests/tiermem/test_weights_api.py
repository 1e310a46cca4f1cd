"""Pins the public names of the weight-streaming modules."""

from __future__ import annotations

import llmsys.tiermem.weights as weights
import llmsys.tiermem.weights_bench as weights_bench
import llmsys.tiermem.weights_layout as weights_layout


def test_weights_all_is_pinned() -> None:
    assert sorted(weights.__all__) == [
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
    for name in weights.__all__:
        assert hasattr(weights, name)


def test_weights_bench_all_is_pinned() -> None:
    assert sorted(weights_bench.__all__) == ["WeightsBenchOptions", "run_weights_bench"]


def test_weights_layout_all_is_pinned() -> None:
    assert sorted(weights_layout.__all__) == [
        "LayerLayout",
        "TENSOR_ALIGN_BYTES",
        "TensorSlot",
        "decoder_layers",
        "layer_layouts",
        "pack_layer",
    ]
