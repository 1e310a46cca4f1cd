"""The weight-streaming comparison as one call: resident, on demand, layer-ahead, accelerate.

``llmsys tiermem weights-bench`` and ``benchmarks/tiermem/bench_weights.py`` both call
:func:`run_weights_bench` with a :class:`WeightsBenchOptions`; neither holds logic of its own.

Every mode runs the same prefill forward (``prompt_tokens`` deterministic token ids) of the
bundled model; repeats are interleaved (the order rotates each round) and medians compared.
Ratios ``weights_stream_vs_X`` are X's median forward time over streaming's: above 1 means
streaming is faster. Each mode's logits are compared with the resident model's
(``torch.equal``).

Accelerate's disk offload (``dispatch_model`` with every decoder layer on ``"disk"``, the
rest on the CPU, the same split as the streamer) reads numpy memmaps, i.e. through the page
cache. Measured twice: *warm* (as it runs by default: the files sit in the page cache, so
its reads are memcpys) and *cold* (``posix_fadvise(DONTNEED)`` on its files before each
forward, so it reads the disk, as the O_DIRECT ssd tier always does).
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmsys.core.errors import ConfigError
from llmsys.core.model import load_bundled_model
from llmsys.core.provenance import config_hash, git_sha
from llmsys.tiermem.tiers import TierKind
from llmsys.tiermem.weights import StreamMode, WeightStreamConfig, WeightStreamer

__all__ = ["WeightsBenchOptions", "run_weights_bench"]


@dataclass(frozen=True, slots=True)
class WeightsBenchOptions:
    """Options of the weight-streaming comparison (the CLI's flags, one field each)."""

    tier: TierKind = TierKind.CXL
    """Tier holding the layer blocks: ``CXL`` (emulated pacing here) or ``SSD``."""
    window_layers: int = 3
    """Layer buffers resident at once when streaming (look-ahead = window - 1)."""
    prompt_tokens: int = 256
    """Tokens of the prefill forward (long enough that a layer's compute can hide a fetch)."""
    repeats: int = 3
    """Measured, interleaved forwards per mode (after one warm-up each)."""
    accelerate: bool = True
    """Also run accelerate's disk offload (skipped, with the reason, if it fails)."""
    threads: int = 1
    """torch intra-op threads (1 keeps two-core ratios stable)."""
    work_dir: Path | None = None
    """Directory for the ssd tier and accelerate's offload folder (default: temp dir)."""
    cxl_bandwidth_bytes_per_s: float | None = None
    """Emulated cxl bandwidth (None: measured memcpy x 1/10)."""

    def __post_init__(self) -> None:
        """Raises: ConfigError: non-positive sizes or an unusable tier/window (see
        :class:`WeightStreamConfig`)."""
        for name in ("prompt_tokens", "repeats", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        WeightStreamConfig(self.tier, self.window_layers, ssd_directory=Path("."))  # validates


def _accelerate_model(model: Any, offload_dir: Path) -> Any:
    """Deep-copy ``model`` and dispatch it with every decoder layer offloaded to disk."""
    from accelerate import dispatch_model

    device_map = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.norm": "cpu",
        "lm_head": "cpu",
    }
    device_map.update({f"model.layers.{i}": "disk" for i in range(len(model.model.layers))})
    return dispatch_model(
        copy.deepcopy(model), device_map=device_map, main_device="cpu", offload_dir=offload_dir
    )


def _drop_page_cache(directory: Path) -> None:
    """Ask the kernel to drop ``directory``'s files from the page cache (clean pages only)."""
    for path in directory.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _p99(values: list[float]) -> float:
    return float(np.percentile(values, 99))


def run_weights_bench(
    options: WeightsBenchOptions, progress: Callable[[str, int, int], None] | None = None
) -> dict[str, Any]:
    """Run every mode; return the summary dict (the issue's keys plus provenance).

    Raises:
        ConfigError / TierConfigError: bad options.
        ModelUnavailableError: the bundled model cannot be loaded.
        TierUnavailableError: the tier cannot be opened (e.g. no O_DIRECT in ``work_dir``).
    """
    torch.set_num_threads(options.threads)
    bundled = load_bundled_model()
    model = bundled.model
    ids = torch.randint(
        0,
        int(model.config.vocab_size),
        (1, options.prompt_tokens),
        generator=torch.Generator().manual_seed(0),
    )
    with tempfile.TemporaryDirectory(dir=options.work_dir, prefix="itme-weights-") as tmp:
        work = Path(tmp)
        (work / "ssd-stream").mkdir()
        (work / "ssd-demand").mkdir()

        def config(mode: StreamMode, window: int, sub: str) -> WeightStreamConfig:
            return WeightStreamConfig(
                options.tier,
                window,
                mode,
                ssd_directory=work / sub,
                cxl_bandwidth_bytes_per_s=options.cxl_bandwidth_bytes_per_s,
            )

        stream = WeightStreamer(
            model,
            config(StreamMode.LAYER_AHEAD, options.window_layers, "ssd-stream"),
            bundled.fingerprint,
        )
        demand = WeightStreamer(
            model, config(StreamMode.ON_DEMAND, 1, "ssd-demand"), bundled.fingerprint
        )
        runners: dict[str, Callable[[], Any]] = {
            "resident": model,
            "on_demand": demand.model,
            "stream": stream.model,
        }
        accelerate_note = "not requested"
        offload = work / "accelerate"
        if options.accelerate:
            try:
                acc = _accelerate_model(model, offload)
            except Exception as exc:  # any failure of a third-party path is reported, not fatal
                accelerate_note = f"accelerate disk offload failed here: {exc!r}"
            else:
                accelerate_note = "dispatch_model, decoder layers on disk (numpy memmaps)"
                runners["accelerate"] = acc
                runners["accelerate_cold"] = acc
        try:
            summary = _measure(options, ids, runners, stream, demand, offload, progress)
        finally:
            stream.close()
            demand.close()
            runners.clear()
    summary["accelerate"] = accelerate_note
    summary["git_sha"] = git_sha()
    summary["config_hash"] = config_hash(asdict(options))
    return summary


def _measure(
    options: WeightsBenchOptions,
    ids: torch.Tensor,
    runners: dict[str, Any],
    stream: WeightStreamer,
    demand: WeightStreamer,
    offload_dir: Path,
    progress: Callable[[str, int, int], None] | None,
) -> dict[str, Any]:
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    equal = dict.fromkeys(names, True)
    with torch.no_grad():
        reference = runners["resident"](ids).logits
        rounds = options.repeats + 1  # round 0 warms every mode up and is not timed
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            if r == 1:
                stream.reset_stats()
                demand.reset_stats()
            for name in order:
                if name == "accelerate_cold":
                    _drop_page_cache(offload_dir)
                start = time.perf_counter()
                logits = runners[name](ids).logits
                elapsed = time.perf_counter() - start
                equal[name] = equal[name] and torch.equal(logits, reference)
                if r:
                    times[name].append(elapsed)
            if progress is not None:
                progress("rounds", r + 1, rounds)
    median = {name: statistics.median(t) for name, t in times.items()}
    s_stats, d_stats = stream.stats(), demand.stats()
    forwards = options.repeats

    def vs(name: str) -> float | None:
        return round(median[name] / median["stream"], 3) if name in median else None

    modes = {
        name: {
            "forward_s_p50": round(median[name], 4),
            "forward_s_p99": round(_p99(times[name]), 4),
            "tokens_per_s": round(options.prompt_tokens / median[name], 1),
            "logits_equal_resident": equal[name],
        }
        for name in names
    }
    tier_desc = stream.describe()["tier"]
    return {
        "weights_stream_vs_resident": vs("resident"),
        "weights_stream_vs_on_demand": vs("on_demand"),
        "weights_stream_vs_accelerate": vs("accelerate"),
        "weights_stream_vs_accelerate_cold": vs("accelerate_cold"),
        "resident_weight_bytes_peak": s_stats.resident_weight_bytes_peak,
        "window_weight_bytes": s_stats.window_bytes,
        "window_bound_met": s_stats.resident_weight_bytes_peak <= s_stats.window_bytes,
        "on_demand_weight_bytes_peak": d_stats.resident_weight_bytes_peak,
        "all_layer_weight_bytes": sum(lay.payload_bytes for lay in stream.layouts),
        "pinned_weight_bytes": s_stats.pinned_weight_bytes,
        "block_bytes": s_stats.block_bytes,
        "stream_fetch_s_per_forward": round(s_stats.fetch_s / forwards, 4),
        "stream_fetch_cpu_s_per_forward": round(s_stats.fetch_cpu_s / forwards, 4),
        "stream_wait_s_per_forward": round(s_stats.wait_s / forwards, 4),
        "on_demand_wait_s_per_forward": round(d_stats.wait_s / forwards, 4),
        "stream_io_hidden_fraction": round(1 - s_stats.wait_s / max(s_stats.fetch_s, 1e-12), 3),
        "logits_bitwise_equal": all(equal.values()),
        "modes": modes,
        "tier": options.tier.value,
        "tier_backend": tier_desc.get("backend"),
        "tier_bandwidth_bytes_per_s": tier_desc.get("configured_bandwidth_bytes_per_s"),
        "window_layers": options.window_layers,
        "prompt_tokens": options.prompt_tokens,
        "repeats": options.repeats,
        "threads": options.threads,
    }
