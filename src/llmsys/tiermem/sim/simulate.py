"""The serving comparison, simulated: the five configurations over ratios, and its summary.

:func:`simulate` replays one workload under each configuration (``recompute`` and
``unbounded`` once, the others per ratio) with :func:`~llmsys.tiermem.sim.replay.replay`;
:meth:`SimComparison.summary` returns the figures keyed as the serving comparison keys
them (``throughput_rps`` ``{config: {ratio: value}}``, ``"-"`` for ratio-independent
configurations), every one marked ``simulated``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmsys.tiermem.serving.compare import CacheConfig
from llmsys.tiermem.sim.profile import HardwareProfile, ProfileError
from llmsys.tiermem.sim.replay import ReplayOptions, SimRun, replay
from llmsys.tiermem.sim.workload import SimRequest, footprint_bytes

__all__ = ["PAPER_SPEEDUP", "SimComparison", "simulate"]

PAPER_SPEEDUP = 1.357
"""ITME's reported throughput over conventional CPU offloading (up to +35.7%)."""


@dataclass(frozen=True, slots=True)
class SimComparison:
    """Every simulated run of one workload under one profile."""

    profile: HardwareProfile
    """The profile time came from."""
    footprint_bytes: int
    """Distinct full prompt blocks x block bytes."""
    runs: dict[str, dict[str, SimRun]]
    """``{config: {ratio or "-": run}}``."""
    options: ReplayOptions
    """Replay knobs used."""

    def throughput(self) -> dict[str, dict[str, float]]:
        """``{config: {ratio: simulated requests per second}}``."""
        return {c: {r: run.throughput_rps for r, run in rs.items()} for c, rs in self.runs.items()}

    def speedup(self, config: str, ratio: int) -> float | None:
        """Throughput of ``config`` at ``ratio`` over cpu-offload's at that ratio."""
        base = self.runs.get("cpu-offload", {}).get(str(ratio))
        runs = self.runs.get(config, {})
        run = runs.get(str(ratio)) or runs.get("-")
        if base is None or run is None or base.throughput_rps <= 0:
            return None
        return run.throughput_rps / base.throughput_rps

    def summary(self, headline_ratio: int = 4) -> dict[str, Any]:
        """The figures, JSON-able; keys as the serving comparison's plus ``simulated``."""
        ttft50: dict[str, dict[str, float]] = {}
        ttft99: dict[str, dict[str, float]] = {}
        hits: dict[str, dict[str, dict[str, float]]] = {}
        for cfg, by_ratio in self.runs.items():
            for ratio, run in by_ratio.items():
                ttfts = [r.ttft_s for r in run.results]
                ttft50.setdefault(cfg, {})[ratio] = float(np.percentile(ttfts, 50))
                ttft99.setdefault(cfg, {})[ratio] = float(np.percentile(ttfts, 99))
                if cfg != CacheConfig.RECOMPUTE.value:
                    hits.setdefault(cfg, {})[ratio] = _hit_rates(run, self.profile.block_tokens)
        ratios = sorted({int(r) for rs in self.runs.values() for r in rs if r != "-"})
        out: dict[str, Any] = {
            "simulated": True,
            "profile": self.profile.name,
            "footprint_bytes": self.footprint_bytes,
            "block_bytes": self.profile.block_bytes,
            "requests": len(next(iter(next(iter(self.runs.values())).values())).results)
            if self.runs
            else 0,
            "throughput_rps": self.throughput(),
            "ttft_p50_s": ttft50,
            "ttft_p99_s": ttft99,
            "hit_rate_by_tier": hits,
            "speedup_itme_vs_cpu_offload": self.speedup("itme", headline_ratio),
            "speedup_unbounded_vs_cpu_offload": self.speedup("unbounded", headline_ratio),
            "speedup_itme_vs_cpu_offload_by_ratio": {
                str(r): self.speedup("itme", r) for r in ratios
            },
            "speedup_unbounded_vs_cpu_offload_by_ratio": {
                str(r): self.speedup("unbounded", r) for r in ratios
            },
            "paper_speedup": PAPER_SPEEDUP,
            "headline_ratio": headline_ratio,
            "lookahead": self.options.lookahead,
            "cxl_factor": self.options.cxl_factor,
        }
        cal = self.profile.calibration
        if cal is not None:
            out["calibration_error_max"] = cal.error_max
            out["calibration_errors"] = cal.errors
        return out


def _hit_rates(run: SimRun, block_tokens: int) -> dict[str, float]:
    blocks = sum(r.prompt_tokens // block_tokens for r in run.results)
    counts: dict[str, int] = {}
    for r in run.results:
        for t in r.hit_tiers:
            counts[t.value] = counts.get(t.value, 0) + 1
    return {k: v / blocks for k, v in counts.items()} if blocks else {}


def simulate(
    requests: Sequence[SimRequest],
    profile: HardwareProfile,
    *,
    configs: Sequence[CacheConfig] = tuple(CacheConfig),
    ratios: Sequence[int] = (1, 2, 4, 8),
    options: ReplayOptions | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> SimComparison:
    """Replay ``requests`` under each configuration and ratio.

    Raises:
        ProfileError: no requests, a ratio < 1, or the profile lacks a needed tier link.
    """
    if not requests:
        raise ProfileError("no requests to simulate")
    if not ratios or any(r < 1 for r in ratios):
        raise ProfileError("ratios must be integers >= 1")
    options = options if options is not None else ReplayOptions()
    footprint = footprint_bytes(requests)
    runs: dict[str, dict[str, SimRun]] = {}
    for cfg in configs:
        for ratio in ratios if cfg.depends_on_ratio else [1]:
            label = str(ratio) if cfg.depends_on_ratio else "-"
            tick = (
                None
                if progress is None
                else functools.partial(_report, progress, f"{cfg.value} r={label}", len(requests))
            )
            runs.setdefault(cfg.value, {})[label] = replay(
                requests,
                profile,
                cfg,
                ratio=ratio,
                footprint_bytes=footprint,
                options=options,
                progress=tick,
            )
    return SimComparison(profile, footprint, runs, options)


def _report(progress: Callable[[str, int, int], None], label: str, total: int, done: int) -> None:
    progress(label, done, total)
