"""Serve one workload under the five cache configurations and compare them.

Configurations, for a KV footprint ``F`` (distinct full prompt blocks x block bytes) and a
ratio ``r``:

- ``recompute``   - no cache.
- ``cpu-offload`` - dram = F / r, LRU: the conventional baseline.
- ``dram-ssd``    - the same dram + an ssd tier holding F, no foresight (LMCache-like).
- ``itme``        - the same dram + cxl of 2 x dram + ssd holding F, foresight prefetch.
- ``unbounded``   - dram holding F: the upper bound no cache policy beats.

``recompute`` and ``unbounded`` do not depend on r and run once. Every configuration serves
the same requests in the same order on the same model runner; each builds a fresh store.
Correctness is judged against ``recompute``: per request, the first token's logits and the
greedy output.
"""

from __future__ import annotations

import enum
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmsys.tiermem.keys import Namespace
from llmsys.tiermem.serving.connector import TieredKVConnector
from llmsys.tiermem.serving.engine import ServeResult, ServingEngine
from llmsys.tiermem.serving.foresight import ForesightPrefetcher
from llmsys.tiermem.serving.runner import ModelRunner
from llmsys.tiermem.serving.workloads import Request, distinct_blocks
from llmsys.tiermem.store import StoreConfig, TieredStore
from llmsys.tiermem.tiers import CxlConfig, DramConfig, SsdConfig, TierConfig
from llmsys.tiermem.tiers.base import TierKind

__all__ = ["CacheConfig", "ComparisonResult", "compare_configs", "parse_configs", "tier_configs"]

NEAR_TIE = 1e-3
"""Top-two logit gap of recompute below which a differing greedy token is a near tie."""


class CacheConfig(enum.Enum):
    """The five configurations of the serving comparison."""

    RECOMPUTE = "recompute"
    CPU_OFFLOAD = "cpu-offload"
    DRAM_SSD = "dram-ssd"
    ITME = "itme"
    UNBOUNDED = "unbounded"

    @property
    def depends_on_ratio(self) -> bool:
        """Whether tier sizes change with the ratio."""
        return self not in (CacheConfig.RECOMPUTE, CacheConfig.UNBOUNDED)


def parse_configs(text: str) -> list[CacheConfig]:
    """Parse ``"itme,cpu-offload"``.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    out = []
    for name in (p.strip() for p in text.split(",") if p.strip()):
        try:
            out.append(CacheConfig(name))
        except ValueError:
            known = ", ".join(c.value for c in CacheConfig)
            raise ValueError(f"unknown configuration {name!r}; known: {known}") from None
    if not out:
        raise ValueError("no configuration given")
    return out


@dataclass(slots=True)
class ComparisonResult:
    """Everything the comparison measured; :meth:`summary` gives the issue's JSON keys."""

    footprint_bytes: int
    block_bytes: int
    runs: dict[str, dict[str, ServeResult]]
    """``{config: {ratio or "-": result}}`` of the first repetition (hits, correctness)."""
    repeats: dict[str, dict[str, list[ServeResult]]]
    """Every repetition of each run, interleaved across configurations (timings)."""
    reads: dict[str, dict[str, tuple[int, int]]]
    """``{config: {ratio: (lower-tier block reads, block hops needed)}}``."""
    miss_path_walls: dict[str, list[float]] = field(default_factory=dict)
    """Queue wall time of every interleaved repetition on a no-reuse workload:
    ``{"recompute": [s, ...], "itme": [s, ...]}`` (empty when not measured)."""

    def summary(self, headline_ratio: int = 4) -> dict[str, Any]:
        """The comparison's figures, keyed as the serving issue names them."""
        thr: dict[str, dict[str, float]] = {}
        p50: dict[str, dict[str, float]] = {}
        p99: dict[str, dict[str, float]] = {}
        for cfg, by_ratio in self.repeats.items():
            for ratio, reps in by_ratio.items():
                # medians over interleaved repetitions: two cores are noisy
                ttfts = [r.ttft_s for res in reps for r in res.results]
                thr.setdefault(cfg, {})[ratio] = statistics.median(
                    res.throughput_rps for res in reps
                )
                p50.setdefault(cfg, {})[ratio] = float(np.percentile(ttfts, 50))
                p99.setdefault(cfg, {})[ratio] = float(np.percentile(ttfts, 99))
        r = str(headline_ratio)
        out: dict[str, Any] = {
            "footprint_bytes": self.footprint_bytes,
            "block_bytes": self.block_bytes,
            "throughput_rps": thr,
            "ttft_p50_s": p50,
            "ttft_p99_s": p99,
        }
        base = thr.get("cpu-offload", {}).get(r)
        itme = thr.get("itme", {}).get(r)
        cap = thr.get("unbounded", {}).get("-")
        out["speedup_itme_vs_cpu_offload"] = itme / base if itme and base else None
        out["speedup_unbounded_vs_cpu_offload"] = cap / base if cap and base else None
        s, c = out["speedup_itme_vs_cpu_offload"], out["speedup_unbounded_vs_cpu_offload"]
        out["itme_share_of_cap"] = (s - 1) / (c - 1) if s and c and c != 1 else None
        out["hit_rate_by_tier"] = {
            cfg: {ratio: _hit_rates(res) for ratio, res in by_ratio.items()}
            for cfg, by_ratio in self.runs.items()
            if cfg != "recompute"
        }
        itme_run = self.runs.get("itme", {}).get(r)
        out["prefetch_timely_fraction"] = _timely(itme_run) if itme_run else None
        reads = self.reads.get("itme", {}).get(r)
        out["redundant_read_ratio"] = (
            (reads[0] / reads[1] if reads[1] else 1.0) if reads is not None else None
        )
        mp = {k: statistics.median(v) for k, v in self.miss_path_walls.items() if v}
        out["miss_path_overhead"] = (
            mp["itme"] / mp["recompute"] - 1 if mp.get("itme") and mp.get("recompute") else None
        )
        out["miss_path_wall_s"] = self.miss_path_walls
        out.update(self._correctness())
        return out

    def _correctness(self) -> dict[str, Any]:
        ref = self.runs.get("recompute", {}).get("-")
        if ref is None:
            return {
                "mismatched_outputs": None,
                "near_ties": None,
                "max_logit_diff_vs_recompute": None,
            }
        mismatched = near_ties = 0
        max_diff = 0.0
        by_config: dict[str, int] = {}
        every_run = (
            (cfg, ratio, res)
            for cfg, by_ratio in self.repeats.items()
            if cfg != "recompute"
            for ratio, reps in by_ratio.items()
            for res in reps
        )
        for cfg, ratio, res in every_run:
            for a, b in zip(ref.results, res.results, strict=True):
                if a.first_logits is not None and b.first_logits is not None:
                    max_diff = max(max_diff, float((a.first_logits - b.first_logits).abs().max()))
                    if not torch.equal(a.first_logits, b.first_logits):
                        label = f"{cfg}@{ratio}"
                        by_config[label] = by_config.get(label, 0) + 1
                if a.output_ids == b.output_ids:
                    continue
                top2 = a.first_logits.topk(2).values if a.first_logits is not None else None
                if top2 is not None and float(top2[0] - top2[1]) < NEAR_TIE:
                    near_ties += 1
                else:
                    mismatched += 1
        return {
            "mismatched_outputs": mismatched,
            "near_ties": near_ties,
            "max_logit_diff_vs_recompute": max_diff,
            "logit_differences_by_config": by_config,
        }


def _hit_rates(res: ServeResult) -> dict[str, float]:
    blocks = sum(r.prompt_tokens // max(1, _block_tokens(res)) for r in res.results)
    counts: dict[str, int] = {}
    for r in res.results:
        for t in r.hit_tiers:
            counts[t.value] = counts.get(t.value, 0) + 1
    return {k: v / blocks for k, v in counts.items()} if blocks else {}


def _block_tokens(res: ServeResult) -> int:
    return int(res.extra.get("block_tokens", 1))


def _timely(res: ServeResult) -> float | None:
    hits = [t for r in res.results for t in r.hit_tiers]
    return sum(t is TierKind.DRAM for t in hits) / len(hits) if hits else None


def tier_configs(
    cfg: CacheConfig, footprint: int, ratio: int, block_bytes: int, ssd_dir: Path
) -> tuple[TierConfig, ...]:
    """The tiers of ``cfg`` for footprint ``footprint`` bytes at ``ratio`` (the simulator
    sizes its stores with this same function)."""
    # every tier gets one block of slack so rounding never makes it smaller than intended
    dram = max(footprint // ratio, 4 * block_bytes) + block_bytes
    full = footprint + 4 * block_bytes
    if cfg is CacheConfig.CPU_OFFLOAD:
        return (DramConfig(dram),)
    if cfg is CacheConfig.DRAM_SSD:
        return (DramConfig(dram), SsdConfig(ssd_dir, full))
    if cfg is CacheConfig.ITME:
        return (DramConfig(dram), CxlConfig(2 * dram), SsdConfig(ssd_dir, full))
    return (DramConfig(full),)


def compare_configs(
    runner: ModelRunner,
    namespace: Namespace,
    requests: Sequence[Request],
    *,
    configs: Sequence[CacheConfig],
    ratios: Sequence[int],
    miss_requests: Sequence[Request] = (),
    lookahead: int = 1,
    work_dir: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    repeats: int = 3,
    serve_repeats: int = 1,
) -> ComparisonResult:
    """Serve ``requests`` under each configuration and ratio; see the module docstring.

    Raises:
        ValueError: a ratio < 1 or no requests.
    """
    if not requests:
        raise ValueError("no requests to serve")
    if any(r < 1 for r in ratios):
        raise ValueError("ratios must be >= 1")
    block_tokens = namespace.block_tokens
    footprint = distinct_blocks(requests, block_tokens) * namespace.block_bytes
    if serve_repeats < 1:
        raise ValueError("serve_repeats must be >= 1")
    runs: dict[str, dict[str, ServeResult]] = {}
    all_runs: dict[str, dict[str, list[ServeResult]]] = {}
    reads: dict[str, dict[str, tuple[int, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="itme-serve-", dir=work_dir) as tmp:
        plan = [
            (rep, cfg, ratio)
            for rep in range(serve_repeats)  # interleaved: each repetition visits all
            for cfg in configs
            for ratio in (ratios if cfg.depends_on_ratio else [0])
        ]
        for rep, cfg, ratio in plan:
            label = str(ratio) if cfg.depends_on_ratio else "-"
            name = f"{cfg.value} r={label}" + (f" #{rep + 1}" if serve_repeats > 1 else "")
            tick = _ticker(progress, name, len(requests))
            res, read = _serve(
                runner,
                namespace,
                requests,
                cfg,
                footprint,
                max(ratio, 1),
                Path(tmp) / f"{cfg.value}-{label}-{rep}",
                lookahead,
                tick,
            )
            res.extra["block_tokens"] = block_tokens
            all_runs.setdefault(cfg.value, {}).setdefault(label, []).append(res)
            if rep == 0:
                runs.setdefault(cfg.value, {})[label] = res
                reads.setdefault(cfg.value, {})[label] = read
        walls: dict[str, list[float]] = {}
        if miss_requests:
            walls = {"recompute": [], "itme": []}
            for rep in range(repeats):  # interleaved, medians: two noisy cores
                for cfg in (CacheConfig.RECOMPUTE, CacheConfig.ITME):
                    res, _ = _serve(
                        runner,
                        namespace,
                        miss_requests,
                        cfg,
                        footprint,
                        4,
                        Path(tmp) / f"miss-{cfg.value}-{rep}",
                        lookahead,
                        None,
                    )
                    walls[cfg.value].append(res.wall_s)
    return ComparisonResult(footprint, namespace.block_bytes, runs, all_runs, reads, walls)


def _ticker(
    progress: Callable[[str, int, int], None] | None, label: str, total: int
) -> Callable[[int], None] | None:
    if progress is None:
        return None
    report = progress
    return lambda done: report(label, done, total)


def _serve(
    runner: ModelRunner,
    namespace: Namespace,
    requests: Sequence[Request],
    cfg: CacheConfig,
    footprint: int,
    ratio: int,
    ssd_dir: Path,
    lookahead: int,
    tick: Callable[[int], None] | None,
) -> tuple[ServeResult, tuple[int, int]]:
    if cfg is CacheConfig.RECOMPUTE:
        return ServingEngine(runner, record_logits=True).serve(requests, tick), (0, 0)
    ssd_dir.mkdir(parents=True, exist_ok=True)
    tiers = tier_configs(cfg, footprint, ratio, namespace.block_bytes, ssd_dir)
    executor = ThreadPoolExecutor(2, thread_name_prefix="itme-store")
    store = TieredStore(namespace, StoreConfig(tiers=tiers), executor=executor)
    prefetcher = None
    connector = TieredKVConnector(store, runner, namespace)
    try:
        if cfg is CacheConfig.ITME:
            prefetcher = ForesightPrefetcher(store, lookahead=lookahead)
        engine = ServingEngine(runner, connector, prefetcher, record_logits=True)
        started = time.perf_counter()
        result = engine.serve(requests, tick)
        result.wall_s = time.perf_counter() - started
        moved = prefetcher.stats.moved_blocks if prefetcher else 0
        direct = sum(1 for r in result.results for t in r.hit_tiers if t is not TierKind.DRAM)
        # needed: each consumed block's hops from where it was when planned (or pinned)
        needed = prefetcher.stats.needed_hops if prefetcher else direct
        return result, (moved + direct, needed)
    finally:
        if prefetcher is not None:
            prefetcher.close()
        connector.close()
        store.close()
        executor.shutdown(wait=True)
