"""Layer-ahead weight streaming: bitwise equality, the window bound, failures, bad input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from llmsys.core.model import load_bundled_model
from llmsys.tiermem import TierConfigError, TierKind, parse_tier_kind
from llmsys.tiermem.block import PAGE_BYTES
from llmsys.tiermem.tiers import CxlTier
from llmsys.tiermem.weights import (
    StreamMode,
    WeightFetchError,
    WeightStreamConfig,
    WeightStreamer,
    layer_layouts,
    pack_layer,
)
from llmsys.tiermem.weights_layout import TENSOR_ALIGN_BYTES

FAST_CXL = 20e9  # bytes/s: keeps setup short; one bitwise test runs the default pacing


@pytest.fixture(scope="module")
def bundled() -> Any:
    torch.set_num_threads(1)
    return load_bundled_model()


def _ids(tokens: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 49152, (1, tokens), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def reference(bundled: Any) -> dict[int, torch.Tensor]:
    """Resident logits of two prompts (seeds 0 and 1)."""
    with torch.no_grad():
        return {seed: bundled.model(_ids(12 + 5 * seed, seed)).logits for seed in (0, 1)}


def _config(tier: TierKind, window: int, tmp_path: Path, **kw: Any) -> WeightStreamConfig:
    return WeightStreamConfig(
        tier, window, ssd_directory=tmp_path, cxl_bandwidth_bytes_per_s=FAST_CXL, **kw
    )


@pytest.mark.parametrize(
    ("tier", "window", "mode"),
    [
        (TierKind.CXL, 3, StreamMode.LAYER_AHEAD),
        (TierKind.SSD, 2, StreamMode.LAYER_AHEAD),
        (TierKind.CXL, 1, StreamMode.ON_DEMAND),
        (TierKind.SSD, 1, StreamMode.ON_DEMAND),
    ],
)
def test_logits_bitwise_equal_to_resident(
    bundled: Any,
    reference: dict[int, torch.Tensor],
    tmp_path: Path,
    tier: TierKind,
    window: int,
    mode: StreamMode,
) -> None:
    config = _config(tier, window, tmp_path, mode=mode)
    if tier is TierKind.CXL and mode is StreamMode.LAYER_AHEAD:  # the default pacing once
        config = WeightStreamConfig(tier, window, mode)
    with WeightStreamer(bundled.model, config, bundled.fingerprint) as streamer, torch.no_grad():
        assert streamer.block_bytes % PAGE_BYTES == 0
        # forward 1 starts cold; forward 2 finds its first layers prefetched by forward 1's
        # tail (the window wraps around)
        for seed in (0, 1):
            logits = streamer.model(_ids(12 + 5 * seed, seed)).logits
            assert torch.equal(logits, reference[seed])
        stats = streamer.stats()
    layers = len(bundled.model.model.layers)
    assert stats.layers_fetched >= 2 * layers
    assert stats.resident_weight_bytes_peak == stats.window_bytes == window * stats.block_bytes


def test_source_model_is_untouched(bundled: Any, tmp_path: Path) -> None:
    before = {n: p.data_ptr() for n, p in bundled.model.named_parameters()}
    with WeightStreamer(bundled.model, _config(TierKind.CXL, 2, tmp_path)) as streamer:
        skeleton = dict(streamer.model.named_parameters())
        # non-layer weights are shared, layer weights are empty until a forward needs them
        assert (
            skeleton["model.embed_tokens.weight"].data_ptr() == before["model.embed_tokens.weight"]
        )
        assert skeleton["model.layers.0.mlp.up_proj.weight"].numel() == 0
    assert {n: p.data_ptr() for n, p in bundled.model.named_parameters()} == before


@pytest.mark.parametrize("window", [2, 31])  # 31: more than the 30 layers
def test_resident_layer_weights_stay_within_the_window(
    bundled: Any, tmp_path: Path, window: int
) -> None:
    layers = len(bundled.model.model.layers)
    with WeightStreamer(bundled.model, _config(TierKind.CXL, window, tmp_path)) as streamer:
        installed: list[int] = []

        def count_installed(module: torch.nn.Module, args: Any) -> None:
            # bytes of layer weights reachable from the skeleton right now: only the layer
            # about to run may have them
            alive = sum(
                p.numel() * p.element_size()
                for p in streamer.model.model.layers.parameters()
                if p.numel()
            )
            installed.append(alive)

        for layer in streamer.model.model.layers:
            layer.register_forward_pre_hook(count_installed)  # runs after the streamer's
        forwards = 1 if window > layers else 2  # one is enough to fill a window of all
        with torch.no_grad():
            for seed in range(forwards):
                streamer.model(_ids(8, seed))
        stats = streamer.stats()
    one_layer = layer_layouts(bundled.model)[0].payload_bytes
    assert len(installed) == forwards * layers and max(installed) <= one_layer
    assert stats.resident_weight_bytes_peak <= stats.window_bytes
    # the window is used, never more than the layers there are
    assert stats.resident_weight_bytes_peak == min(window, layers) * stats.block_bytes


def test_layout_is_aligned_and_covers_every_parameter(bundled: Any) -> None:
    layouts = layer_layouts(bundled.model)
    layer = bundled.model.model.layers[0]
    lay = layouts[0]
    assert len(layouts) == 30 and all(x == lay for x in layouts)
    assert [s.name for s in lay.tensors] == [n for n, _ in layer.named_parameters()]
    ends = 0
    for slot in lay.tensors:
        assert slot.offset_bytes % TENSOR_ALIGN_BYTES == 0 and slot.offset_bytes >= ends
        ends = slot.offset_bytes + slot.nbytes
    # 7 projections + 2 norms of SmolLM2-135M in float32
    assert sum(s.nbytes for s in lay.tensors) == 14_160_384
    assert lay.payload_bytes <= 14_160_384 + 9 * TENSOR_ALIGN_BYTES


def test_a_missing_or_corrupt_block_raises_and_the_stream_recovers(
    bundled: Any, reference: dict[int, torch.Tensor], tmp_path: Path
) -> None:
    with WeightStreamer(bundled.model, _config(TierKind.CXL, 3, tmp_path)) as streamer:
        tier = streamer.tier
        assert isinstance(tier, CxlTier)
        key = streamer._keys[7]
        tier.corrupt_for_test(key, offset=100)
        with torch.no_grad(), pytest.raises(WeightFetchError, match="layer 7"):
            streamer.model(_ids(12, 0))
        assert tier.stats().corrupt == 1 and key not in tier
        # put the layer back: the next forward drops the failed one's leftovers and is exact
        staging = bytearray(streamer.block_bytes)
        pack_layer(bundled.model.model.layers[7], streamer.layouts[7], memoryview(staging))
        assert tier.put(key, memoryview(staging))
        with torch.no_grad():
            assert torch.equal(streamer.model(_ids(12, 0)).logits, reference[0])
        assert streamer.stats().resident_weight_bytes_peak <= streamer.stats().window_bytes


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window_layers": 0}, "window_layers must be >= 1"),
        ({"window_layers": -2}, "window_layers must be >= 1"),
        ({"window_layers": True}, "window_layers must be an int"),
        ({"tier": TierKind.DRAM}, "cxl or ssd"),
        ({"tier": TierKind.REMOTE}, "cxl or ssd"),
        ({"tier": "cxl"}, "cxl or ssd"),
        ({"tier": TierKind.SSD}, "ssd_directory"),
        ({"mode": "on-demand"}, "StreamMode"),
    ],
)
def test_bad_config_raises_a_clear_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(TierConfigError, match=message):
        WeightStreamConfig(**kwargs)


def test_unknown_tier_name_and_layerless_model_raise() -> None:
    with pytest.raises(TierConfigError, match="unknown tier 'nvme'"):
        parse_tier_kind("nvme")
    with pytest.raises(TierConfigError, match="no decoder layers"):
        WeightStreamer(torch.nn.Linear(2, 2), WeightStreamConfig())


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    import threading

    before = {t.name for t in threading.enumerate()}
    yield
    leaked = {t.name for t in threading.enumerate()} - before
    assert not {n for n in leaked if n.startswith("itme-weights")}
