"""Calibrating the ``this-machine`` profile: microbenchmarks, then a fit on ratios 1 and 2.

1. :func:`measure_machine` times the real bundled model on this project's chunk grid
   (prefill at several new-token / context sizes, decode at two contexts, the runner's
   block <-> cache conversions) and the store's real tiers (dram arena, emulated cxl as the
   serving comparison configures it, O_DIRECT ssd) through the ``Tier`` API, and fits the
   profile's compute terms by non-negative least squares -> :class:`MachineMeasurements`.
2. :func:`calibrate_profile` replays the measured serving workload in the simulator and fits
   what microbenchmarks cannot see - a fixed per-request cost and one scale each on compute
   and on tier transfers (serving runs share two cores with foresight threads and other
   load) - on the serving runs at ``fit_ratios`` only (plus the ratio-independent
   ``recompute`` and ``unbounded``). It then predicts ``held_out_ratios`` and records the
   per-configuration relative error in the profile's :class:`Calibration`.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.optimize import minimize, nnls

from llmsys.tiermem.clock import MonotonicClock
from llmsys.tiermem.keys import Namespace, chain_keys
from llmsys.tiermem.sim.profile import Calibration, HardwareProfile, ProfileError
from llmsys.tiermem.sim.replay import ReplayOptions
from llmsys.tiermem.sim.simulate import simulate
from llmsys.tiermem.sim.workload import SimRequest
from llmsys.tiermem.tiers import (
    CxlBackend,
    CxlConfig,
    DramConfig,
    SsdConfig,
    TierConfig,
    open_tier,
)
from llmsys.tiermem.tiers.base import TierKind, TransferModel

if TYPE_CHECKING:  # the serving stack imports torch: only the functions that run it load it
    from llmsys.tiermem.serving.runner import ModelRunner

__all__ = [
    "MachineMeasurements",
    "calibrate_from_serving",
    "calibrate_profile",
    "measure_machine",
    "serving_requests",
]


@dataclass(frozen=True, slots=True)
class MachineMeasurements:
    """What the microbenchmarks measured (the profile before the serving fit)."""

    kv_bytes_per_token: int
    """KV bytes per token of the bundled model."""
    block_tokens: int
    """Tokens per block of the serving runs."""
    prefill_chunk_blocks: int
    """Blocks per prefill pass of the serving runs."""
    prefill_pass_s: float
    """Fitted fixed cost per prefill pass."""
    prefill_token_s: float
    """Fitted prefill cost per new token."""
    prefill_pair_s: float
    """Fitted prefill cost per (new, attended) token pair."""
    decode_token_s: float
    """Fitted decode cost per step."""
    decode_context_token_s: float
    """Fitted decode cost per step per context token."""
    load_block_overhead_s: float
    """Median ``cache_from_blocks`` time per block."""
    save_block_overhead_s: float
    """Median ``blocks_from_cache`` time per block."""
    tiers: dict[TierKind, TransferModel]
    """Measured per-block cost of each tier through the Tier API."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (:meth:`from_dict` reads it back)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "tiers"}
        out["tiers"] = {k.value: dataclasses.asdict(v) for k, v in self.tiers.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MachineMeasurements:
        """Inverse of :meth:`to_dict`.

        Raises:
            ProfileError: missing or malformed fields.
        """
        try:
            tiers = {TierKind(k): TransferModel(**v) for k, v in data["tiers"].items()}
            rest = {k: v for k, v in data.items() if k != "tiers"}
            return cls(**rest, tiers=tiers)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"malformed machine measurements: {exc}") from None


def _median_s(fn: Any, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _measure_tier(kind: TierKind, block_bytes: int, work_dir: Path, blocks: int) -> TransferModel:
    """Median per-block put/get time of a real tier as the serving comparison opens it."""
    cap = (blocks + 1) * block_bytes
    config: TierConfig
    if kind is TierKind.DRAM:
        config = DramConfig(cap)
    elif kind is TierKind.CXL:  # as the serving comparison opens it: emulated, paced
        config = CxlConfig(cap, backend=CxlBackend.EMULATED)
    else:
        config = SsdConfig(work_dir, cap)
    tier = open_tier(config, block_bytes=block_bytes, clock=MonotonicClock())
    ns = Namespace("calibration", "float32", "bytes", 1, block_bytes)
    keys = chain_keys(ns, np.arange(blocks))
    buf = np.random.default_rng(0).integers(0, 256, block_bytes, dtype=np.uint8)
    out = memoryview(bytearray(block_bytes))
    try:
        puts, gets = [], []
        for key in keys:
            start = time.perf_counter()
            tier.put(key, buf.data)
            puts.append(time.perf_counter() - start)
        for key in keys:
            start = time.perf_counter()
            tier.get_into(key, out)
            gets.append(time.perf_counter() - start)
    finally:
        tier.close()
    get_s, put_s = statistics.median(gets[1:]), statistics.median(puts[1:])
    return TransferModel(0.0, block_bytes / get_s, block_bytes / put_s)


def measure_machine(
    runner: ModelRunner, work_dir: Path | None = None, repeats: int = 3
) -> MachineMeasurements:
    """Microbenchmark the model runner and the store's tiers (a minute or two)."""
    g = runner.geometry
    step = runner.chunk_tokens
    rng = np.random.default_rng(7)
    prompt = [int(t) for t in rng.integers(200, 40_000, 8 * step + 1)]
    rows: list[tuple[float, float, float]] = []
    times: list[float] = []
    for cached_chunks, new_chunks in ((0, 1), (0, 2), (0, 4), (0, 8), (2, 1), (4, 1), (6, 2)):
        cached, n = cached_chunks * step, (cached_chunks + new_chunks) * step
        base = runner.prefill(prompt[:cached], runner.empty_cache(), 0).cache if cached else None

        samples = []
        for _ in range(repeats + 1):  # the first is a warm-up
            cache = runner.empty_cache() if base is None else _copy_cache(runner, base, cached)
            start = time.perf_counter()
            runner.prefill(prompt[:n], cache, cached)
            samples.append(time.perf_counter() - start)
        new = n - cached
        rows.append((new_chunks, new, new * cached + new * (new + 1) / 2))
        times.append(statistics.median(samples[1:]))
    coef, _ = nnls(np.asarray(rows, dtype=float), np.asarray(times))
    decode_rows, decode_times = [], []
    for context in (step, 6 * step):
        res = runner.prefill(prompt[:context], runner.empty_cache(), 0)
        steps = 8
        cache_blocks = runner.blocks_from_cache(res.cache, 0, context // g.block_tokens)

        def dec(blocks: Any = cache_blocks, steps: int = steps) -> None:
            # eos cannot stop it early: the model decodes from fixed token 0 for `steps`
            cache = runner.cache_from_blocks([b.data for b in blocks])
            runner.decode(cache, 200, steps + 1)

        conv = _median_s(lambda blocks=cache_blocks: runner.cache_from_blocks(blocks), repeats)
        decode_rows.append((steps, steps * context + steps * (steps + 1) / 2))
        decode_times.append(max(0.0, _median_s(dec, repeats) - conv))
    dcoef, _ = nnls(np.asarray(decode_rows, dtype=float), np.asarray(decode_times))
    res = runner.prefill(prompt[: 8 * step], runner.empty_cache(), 0)
    n_blocks = 8 * step // g.block_tokens
    blocks = runner.blocks_from_cache(res.cache, 0, n_blocks)
    load = _median_s(lambda: runner.cache_from_blocks(blocks), repeats) / n_blocks
    save = _median_s(lambda: runner.blocks_from_cache(res.cache, 0, n_blocks), repeats) / n_blocks
    with tempfile.TemporaryDirectory(prefix="itme-calib-", dir=work_dir) as tmp:
        tiers = {
            kind: _measure_tier(kind, g.block_bytes, Path(tmp), 24)
            for kind in (TierKind.DRAM, TierKind.CXL, TierKind.SSD)
        }
    return MachineMeasurements(
        kv_bytes_per_token=g.bytes_per_token,
        block_tokens=g.block_tokens,
        prefill_chunk_blocks=runner.chunk_blocks,
        prefill_pass_s=float(coef[0]),
        prefill_token_s=float(coef[1]),
        prefill_pair_s=float(coef[2]),
        decode_token_s=float(dcoef[0]),
        decode_context_token_s=float(dcoef[1]),
        load_block_overhead_s=load,
        save_block_overhead_s=save,
        tiers=tiers,
    )


def _copy_cache(runner: ModelRunner, cache: Any, tokens: int) -> Any:
    blocks = runner.blocks_from_cache(cache, 0, tokens // runner.geometry.block_tokens)
    return runner.cache_from_blocks([b.data for b in blocks])


def _profile(
    m: MachineMeasurements, overhead_s: float, compute: float, io: float
) -> HardwareProfile:
    tiers = {
        kind: TransferModel(t.latency_s, t.read_bytes_per_s / io, t.write_bytes_per_s / io)
        for kind, t in m.tiers.items()
    }
    return HardwareProfile(
        name="this-machine",
        description="this machine (CPU), the bundled model on the serving comparison's grid",
        kv_bytes_per_token=m.kv_bytes_per_token,
        block_tokens=m.block_tokens,
        prefill_chunk_blocks=m.prefill_chunk_blocks,
        trace_tokens_per_hash=8,
        prefill_pass_s=m.prefill_pass_s * compute,
        prefill_token_s=m.prefill_token_s * compute,
        prefill_pair_s=m.prefill_pair_s * compute,
        decode_token_s=m.decode_token_s * compute,
        decode_context_token_s=m.decode_context_token_s * compute,
        request_overhead_s=overhead_s,
        load_block_overhead_s=m.load_block_overhead_s * io,
        save_block_overhead_s=m.save_block_overhead_s * io,
        async_saves=False,
        tiers=tiers,
    )


_LOW = np.log([1e-6, 0.2, 0.2])
_HIGH = np.log([1.0, 5.0, 5.0])


def _measured(summary: dict[str, Any], ratios: Sequence[int]) -> dict[tuple[str, str], float]:
    thr = summary.get("throughput_rps")
    if not isinstance(thr, dict):
        raise ProfileError("serving summary has no throughput_rps")
    out: dict[tuple[str, str], float] = {}
    for cfg, by_ratio in thr.items():
        for ratio, value in by_ratio.items():
            if ratio == "-" or int(ratio) in ratios:
                out[(cfg, ratio)] = float(value)
    return out


def calibrate_profile(
    measurements: MachineMeasurements,
    serving_summary: dict[str, Any],
    requests: Sequence[SimRequest],
    *,
    fit_ratios: Sequence[int] = (1, 2),
    held_out_ratios: Sequence[int] = (4, 8),
    lookahead: int = 2,
    source: str = "",
) -> HardwareProfile:
    """Fit the serving-level terms on ``fit_ratios``; validate on ``held_out_ratios``.

    ``serving_summary`` is the JSON summary of a serving comparison of ``requests``
    (``throughput_rps`` ``{config: {ratio: rps}}``).

    Raises:
        ProfileError: the summary lacks a fitted or held-out run, or the ratio sets overlap.
    """
    if set(fit_ratios) & set(held_out_ratios):
        raise ProfileError("fitted and held-out ratios overlap")
    seen = _measured(serving_summary, fit_ratios)
    unseen = {k: v for k, v in _measured(serving_summary, held_out_ratios).items() if k[1] != "-"}
    if not unseen or not any(r != "-" for _, r in seen):
        raise ProfileError("serving summary lacks runs at the fitted or held-out ratios")
    from llmsys.tiermem.serving.compare import CacheConfig

    configs = [CacheConfig(c) for c in sorted({c for c, _ in seen | unseen.keys()})]
    options = ReplayOptions(lookahead=lookahead)

    def scales(params: np.ndarray) -> tuple[float, float, float]:
        # plausible ranges: a per-request cost up to 1 s, compute and transfers within 5x
        # of their microbenchmarks (noisy runs otherwise drive a scale to 0 or infinity)
        overhead, compute, io = np.exp(np.clip(params, _LOW, _HIGH))
        return float(overhead), float(compute), float(io)

    def predict(params: np.ndarray, ratios: Sequence[int]) -> dict[tuple[str, str], float]:
        overhead, compute, io = scales(params)
        comp = simulate(
            requests,
            _profile(measurements, overhead, compute, io),
            configs=configs,
            ratios=ratios,
            options=options,
        )
        return {(c, r): v for c, rs in comp.throughput().items() for r, v in rs.items()}

    def loss(params: np.ndarray) -> float:
        sim = predict(params, fit_ratios)
        return float(sum(np.log(sim[k] / v) ** 2 for k, v in seen.items() if k in sim))

    start = np.log([1e-3, 1.0, 1.0])
    fit = minimize(loss, start, method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 1e-6})
    sim = predict(fit.x, held_out_ratios)
    errors: dict[str, dict[str, float]] = {}
    for (cfg, ratio), value in sorted(unseen.items()):
        errors.setdefault(cfg, {})[ratio] = (sim[(cfg, ratio)] - value) / value
    overhead, compute, io = scales(fit.x)
    profile = _profile(measurements, overhead, compute, io)
    sources = {
        "prefill": "non-negative least squares over 7 prefill timings of the bundled model on "
        f"the {measurements.block_tokens * measurements.prefill_chunk_blocks}-token chunk grid,"
        f" x compute scale {compute:.3f} fitted on serving runs",
        "decode": f"least squares over decode timings at two contexts, x {compute:.3f}",
        "tiers": "median per-block put/get through the Tier API (dram arena, emulated cxl as the "
        f"serving comparison opens it, O_DIRECT ssd), transfer time x io scale {io:.3f}",
        "request_overhead_s": "fitted on the serving runs at ratios "
        + ",".join(map(str, fit_ratios)),
    }
    calibration = Calibration(
        fit_ratios=tuple(fit_ratios),
        held_out_ratios=tuple(held_out_ratios),
        errors=errors,
        error_max=max(abs(e) for by in errors.values() for e in by.values()),
        serving_runs=source,
    )
    return dataclasses.replace(profile, sources=sources, calibration=calibration)


def serving_requests(
    summary: dict[str, Any], tokenize: Any, measurements: MachineMeasurements
) -> list[SimRequest]:
    """Rebuild the requests of a serving run from its summary's workload recipe.

    Raises:
        ProfileError: the summary's workload cannot be rebuilt or rebuilds differently.
    """
    from llmsys.tiermem.serving.workloads import Request, chat_workload, docs_workload
    from llmsys.tiermem.sim.workload import requests_from_serving

    kind = summary.get("workload")
    builders: dict[str, Callable[..., list[Request]]] = {
        "chat": chat_workload,
        "docs": docs_workload,
    }
    if not isinstance(kind, str) or kind not in builders or "footprint_mib" not in summary:
        raise ProfileError(
            f"cannot rebuild serving workload {kind!r}: need a chat/docs summary with "
            "footprint_mib (written by run_serving_bench)"
        )
    reqs = builders[kind](
        tokenize,
        target_footprint_bytes=int(float(summary["footprint_mib"]) * 2**20),
        bytes_per_token=measurements.kv_bytes_per_token,
        block_tokens=measurements.block_tokens,
        max_new_tokens=int(summary.get("max_new_tokens", 4)),
    )
    if len(reqs) != int(summary.get("requests", len(reqs))):
        raise ProfileError(
            f"rebuilt {len(reqs)} requests, the summary served {summary['requests']}"
        )
    ns = Namespace(
        "sim:this-machine",
        "simulated",
        "simulated",
        measurements.block_tokens,
        measurements.block_tokens * measurements.kv_bytes_per_token,
    )
    return requests_from_serving(reqs, ns)


def calibrate_from_serving(
    summary: dict[str, Any],
    *,
    source: str = "",
    work_dir: Path | None = None,
    measurements: MachineMeasurements | None = None,
) -> tuple[HardwareProfile, MachineMeasurements]:
    """Measure this machine with the summary's geometry (unless ``measurements`` are
    given), then :func:`calibrate_profile`.

    Raises:
        ProfileError: see :func:`serving_requests` and :func:`calibrate_profile`.
        ModelUnavailableError: the bundled model cannot be loaded.
    """
    import torch

    from llmsys.core.model import load_bundled_model
    from llmsys.tiermem.serving.runner import ModelRunner

    torch.set_num_threads(1)  # as the serving runs
    bundled = load_bundled_model()
    block_tokens = int(summary.get("block_tokens", 16))
    chunk_blocks = int(summary.get("prefill_chunk_tokens", block_tokens)) // block_tokens
    if measurements is None:
        runner = ModelRunner(bundled, block_tokens, chunk_blocks)
        measurements = measure_machine(runner, work_dir)

    def tokenize(text: str) -> list[int]:
        return list(bundled.tokenizer(text, add_special_tokens=False)["input_ids"])

    requests = serving_requests(summary, tokenize, measurements)
    profile = calibrate_profile(
        measurements,
        summary,
        requests,
        lookahead=int(summary.get("lookahead", 2)),
        source=source,
    )
    return profile, measurements
