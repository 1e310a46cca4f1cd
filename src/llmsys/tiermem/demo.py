"""``llmsys demo`` for tiermem: two requests sharing a prefix, over dram -> cxl -> ssd.

Request A's 24 blocks are stored into a store whose dram holds 4 blocks and cxl 8, so the
oldest spill to the O_DIRECT ssd tier. Request B shares A's first 16 blocks: ``lookup``
finds them (and says in which tier each sits), a prefetch pulls the ssd-resident ones up to
cxl, and the two-phase load copies them into B's buffers, verified against A's bytes. The
same workload then runs metadata-only on a simulated clock, through the same code.
"""

from __future__ import annotations

import collections
import pathlib
from dataclasses import dataclass

import numpy as np

from llmsys.core.machine import o_direct_supported
from llmsys.tiermem.block import aligned_buffer
from llmsys.tiermem.clock import ManualClock
from llmsys.tiermem.keys import Namespace, chain_keys
from llmsys.tiermem.prefetch import InlineExecutor
from llmsys.tiermem.store import StoreConfig, TieredStore
from llmsys.tiermem.tiers import (
    CxlBackend,
    CxlConfig,
    DramConfig,
    SsdConfig,
    TierConfig,
    TierKind,
)

BLOCK_TOKENS = 16
BLOCK_BYTES = 256 << 10


def _payload(block_index: int) -> np.ndarray:
    return np.random.default_rng(block_index).integers(0, 256, BLOCK_BYTES, dtype=np.uint8)


def _config(ssd_dir: pathlib.Path | None, metadata_only: bool) -> StoreConfig:
    tiers: list[TierConfig] = [
        DramConfig(4 * BLOCK_BYTES),
        CxlConfig(8 * BLOCK_BYTES, backend=CxlBackend.EMULATED),
    ]
    if ssd_dir is not None:
        tiers.append(SsdConfig(ssd_dir, 64 * BLOCK_BYTES))
    return StoreConfig(tiers=tuple(tiers), metadata_only=metadata_only)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one run of the demo workload observed."""

    hit: int
    """Blocks of B found cached."""
    of: int
    """Blocks of B."""
    before: dict[str, int]
    """Tier name -> blocks of the hit, at lookup time."""
    prefetched: int
    """Blocks the prefetch moved."""
    loaded: int
    """Blocks loaded into B's buffers."""
    ok: bool
    """Loaded bytes equal A's."""
    load_s: float
    """Load time on the store's clock."""


def _run(store: TieredStore, ns: Namespace, real: bool) -> _Outcome:
    prompt_a = np.arange(24 * BLOCK_TOKENS)
    prompt_b = np.concatenate([prompt_a[: 16 * BLOCK_TOKENS], 50_000 + np.arange(200)])
    keys_a, keys_b = chain_keys(ns, prompt_a), chain_keys(ns, prompt_b)
    for i, key in enumerate(keys_a):  # the engine saves A's KV block by block
        handle = store.prepare_store([key])
        for k in handle.keys:
            store.write(handle, k, _payload(i).data if real else None)
        store.complete_store(handle)
    hit = store.lookup(keys_b)
    before = collections.Counter(t.value for t in hit.tiers)
    ssd_keys = [k for k, t in zip(keys_b, hit.tiers, strict=False) if t is TierKind.SSD]
    prefetch = store.prefetch(ssd_keys, TierKind.CXL)
    prefetch.wait()
    load = store.prepare_load(keys_b)
    outs = [aligned_buffer(BLOCK_BYTES) if real else None for _ in load.keys]
    start = store.clock.now()
    loaded = store.read(load, outs)
    load_s = store.clock.now() - start
    store.complete_load(load)
    ok = all(
        out is None or np.array_equal(np.frombuffer(out, dtype=np.uint8), _payload(i))
        for i, out in enumerate(outs[:loaded])
    )
    return _Outcome(
        hit.num_blocks, len(keys_b), dict(before), prefetch.moved_blocks, loaded, ok, load_s
    )


def run_demo(out_dir: pathlib.Path) -> list[str]:
    """Run the demo in ``out_dir`` (the ssd slot file goes there); return summary lines."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ns = Namespace("demo-model", "float16", "layers,kv,heads,tokens,dim", BLOCK_TOKENS, BLOCK_BYTES)
    ssd_dir = out_dir if o_direct_supported(out_dir) else None
    lines = [
        f"tiermem demo: blocks of {BLOCK_TOKENS} tokens / {BLOCK_BYTES >> 10} KiB; "
        "dram 4 blocks, cxl 8 (emulated), ssd 64 (O_DIRECT)"
    ]
    if ssd_dir is None:
        lines.append(
            f"note: {out_dir} does not support O_DIRECT, so the demo runs without its ssd "
            "tier (blocks past cxl are dropped)"
        )
    with TieredStore(ns, _config(ssd_dir, metadata_only=False)) as store:
        r = _run(store, ns, real=True)
        stats = store.stats()
        cxl = store.describe()["tiers"][1]
    lines += [
        f"real run: request B reuses {r.hit}/{r.of} blocks of A; tiers at lookup "
        f"{r.before}; prefetched {r.prefetched} ssd blocks to cxl",
        f"real run: loaded {r.loaded} blocks in {r.load_s * 1e3:.2f} ms, "
        f"bytes verified equal to A's: {r.ok}",
        "real run: cxl backend {} at {:.2f} GB/s configured; demotions {}, promotions {}, "
        "corrupt {}".format(
            cxl["backend"],
            cxl["configured_bandwidth_bytes_per_s"] / 1e9,
            stats.demotions,
            stats.promotions,
            sum(t.corrupt for t in stats.tiers),
        ),
    ]
    clock = ManualClock()
    sim_cfg = _config(ssd_dir, metadata_only=True)
    with TieredStore(ns, sim_cfg, clock=clock, executor=InlineExecutor()) as sim:
        s = _run(sim, ns, real=False)
    lines.append(
        f"metadata-only replay (same code, simulated clock): reuses {s.hit}/{s.of}, "
        f"load {s.load_s * 1e3:.2f} ms simulated, whole run {clock.now() * 1e3:.2f} ms"
    )
    return lines + _serving_demo(out_dir)


def _serving_demo(out_dir: pathlib.Path) -> list[str]:
    """A small serving comparison on the real model: recompute, cpu-offload, itme at ratio 4."""
    from llmsys.tiermem.serving import CacheConfig, ServingBenchOptions, run_serving_bench

    options = ServingBenchOptions(
        footprint_mib=60.0,
        ratios=(4,),
        configs=(CacheConfig.RECOMPUTE, CacheConfig.CPU_OFFLOAD, CacheConfig.ITME),
        miss_requests=0,
        repeats=1,
        work_dir=out_dir,
    )
    summary = run_serving_bench(options)
    thr = summary["throughput_rps"]
    return [
        f"serving SmolLM2 on {summary['requests']} chat requests "
        f"(KV footprint {summary['footprint_bytes'] / 2**20:.0f} MiB, dram = footprint / 4):",
        "  req/s  recompute {:.2f}  cpu-offload {:.2f}  itme {:.2f} -> itme {:.2f}x "
        "cpu-offload".format(
            thr["recompute"]["-"],
            thr["cpu-offload"]["4"],
            thr["itme"]["4"],
            summary["speedup_itme_vs_cpu_offload"],
        ),
        "  outputs identical to recompute: {} (max logit diff {:.1e})".format(
            summary["mismatched_outputs"] == 0, summary["max_logit_diff_vs_recompute"]
        ),
    ]
