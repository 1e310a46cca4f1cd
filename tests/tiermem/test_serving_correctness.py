"""Serving the real model through every tier is lossless: bitwise KV, identical outputs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from llmsys.core.model import load_bundled_model
from llmsys.tiermem.block import aligned_buffer
from llmsys.tiermem.clock import MonotonicClock
from llmsys.tiermem.keys import Namespace
from llmsys.tiermem.serving import (
    ForesightPrefetcher,
    ModelRunner,
    Request,
    ServingEngine,
    TieredKVConnector,
)
from llmsys.tiermem.store import StoreConfig, TieredStore
from llmsys.tiermem.tiers import (
    CxlConfig,
    DramConfig,
    RemoteConfig,
    SsdConfig,
    open_tier,
)
from llmsys.tiermem.tiers.base import TierKind

BLOCK_TOKENS = 8


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    torch.set_num_threads(1)
    return ModelRunner(load_bundled_model(), BLOCK_TOKENS)


def _namespace(runner: ModelRunner) -> Namespace:
    g = runner.geometry
    return Namespace(runner.bundled.fingerprint, "float32", g.layout, g.block_tokens, g.block_bytes)


def _prompt(seed: int, n: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(200, 40000, n)]


@pytest.mark.parametrize("kind", list(TierKind))
def test_kv_round_trips_bitwise_through_each_tier(
    kind: TierKind, runner: ModelRunner, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ns = _namespace(runner)
    prompt = _prompt(1, 4 * BLOCK_TOKENS + 3)
    res = runner.prefill(prompt, runner.empty_cache(), 0)
    blocks = runner.blocks_from_cache(res.cache, 0, 4)
    cap = 8 * ns.block_bytes
    config = {
        TierKind.DRAM: lambda: DramConfig(cap),
        TierKind.CXL: lambda: CxlConfig(cap),
        TierKind.SSD: lambda: SsdConfig(tmp_path, cap),
        TierKind.REMOTE: lambda: RemoteConfig(cap, *request.getfixturevalue("redis_server")),
    }[kind]()
    tier = open_tier(config, block_bytes=ns.block_bytes, clock=MonotonicClock())
    try:
        from llmsys.tiermem.keys import chain_keys

        keys = chain_keys(ns, prompt[: 4 * BLOCK_TOKENS])
        for key, block in zip(keys, blocks, strict=True):
            assert tier.put(key, memoryview(block))
        outs = [aligned_buffer(ns.block_bytes) for _ in keys]
        for key, out in zip(keys, outs, strict=True):
            assert tier.get_into(key, out) == ns.block_bytes
        back = runner.cache_from_blocks(outs)
        for layer in range(runner.geometry.layers):
            want = res.cache.layers[layer]
            got = back.layers[layer]
            assert torch.equal(got.keys, want.keys[:, :, : 4 * BLOCK_TOKENS])
            assert torch.equal(got.values, want.values[:, :, : 4 * BLOCK_TOKENS])
    finally:
        tier.close()


def _workload() -> list[Request]:
    # 6 "documents" of 3 blocks, 4 questions each: 24 requests. Serving the documents
    # forward then backward gives every reuse distance from 0 to 5 documents, so with 12
    # local slots the shared prefixes come back from dram, cxl, ssd and (dropped locally,
    # kept by write-through) redis
    docs = [_prompt(100 + d, 3 * BLOCK_TOKENS) for d in range(6)]
    order = [*range(6), *reversed(range(6)), *range(6), *reversed(range(6))]
    return [
        Request(f"d{d}q{q}", tuple(docs[d] + _prompt(1000 + 10 * d + q, 5)), 3)
        for q, d in enumerate(order)
    ]


@pytest.mark.parametrize("chunk_blocks", [1, 3])
def test_cached_serving_matches_recompute_across_all_tiers(
    runner: ModelRunner, chunk_blocks: int, tmp_path: Path, redis_server: tuple[str, int]
) -> None:
    ns = _namespace(runner)
    runner = ModelRunner(runner.bundled, BLOCK_TOKENS, chunk_blocks)
    requests = _workload()
    reference = ServingEngine(runner, record_logits=True).serve(requests)

    bb = ns.block_bytes
    # dram 4 blocks -> cxl 4 -> ssd 4 -> dropped locally, still on redis (write-through)
    config = StoreConfig(
        tiers=(
            DramConfig(4 * bb),
            CxlConfig(4 * bb),
            SsdConfig(tmp_path, 4 * bb),
            RemoteConfig(1000 * bb, *redis_server, key_prefix=f"serving-{chunk_blocks}:".encode()),
        )
    )
    with TieredStore(ns, config) as store:
        connector = TieredKVConnector(store, runner, ns)
        engine = ServingEngine(runner, connector, record_logits=True)
        cached = engine.serve(requests)
        connector.close()

    seen = {t for r in cached.results for t in r.hit_tiers}
    assert seen == set(TierKind), f"hits came only from {seen}"
    assert sum(r.cached_tokens for r in cached.results) > 0
    for a, b in zip(reference.results, cached.results, strict=True):
        assert a.output_ids == b.output_ids, a.request_id
        assert a.first_logits is not None and b.first_logits is not None
        # block-grid prefill: a cached prefix gives bitwise the recompute's logits
        assert torch.equal(a.first_logits, b.first_logits), a.request_id


def test_foresight_promotes_queued_blocks_and_releases_pins(
    runner: ModelRunner, tmp_path: Path
) -> None:
    ns = _namespace(runner)
    bb = ns.block_bytes
    config = StoreConfig(
        tiers=(DramConfig(6 * bb), CxlConfig(6 * bb), SsdConfig(tmp_path, 40 * bb))
    )
    executor = ThreadPoolExecutor(2)
    with TieredStore(ns, config, executor=executor) as store:
        connector = TieredKVConnector(store, runner, ns)
        engine = ServingEngine(runner, connector)
        first = Request("a", tuple(_prompt(7, 4 * BLOCK_TOKENS + 1)), 1)
        fillers = [
            Request(f"f{i}", tuple(_prompt(50 + i, 4 * BLOCK_TOKENS + 1)), 1) for i in range(4)
        ]
        engine.serve([first, *fillers])  # first's 4 blocks are pushed down to ssd/cxl
        keys = connector.block_keys(first)
        assert TierKind.DRAM not in store.lookup(keys).tiers
        prefetcher = ForesightPrefetcher(store, lookahead=1, chunk_blocks=2)
        try:
            prefetcher.plan([("a", keys)])
            assert prefetcher.wait_idle("a", timeout_s=30)
            # every block climbed to dram before the request ran
            assert store.lookup(keys).tiers == (TierKind.DRAM,) * 4
            moved = prefetcher.stats.moved_blocks
            assert moved >= 4
            # planning again reads nothing: the blocks are already in dram
            prefetcher.cancel("a")
            prefetcher.plan([("a2", keys)])
            assert prefetcher.wait_idle("a2", timeout_s=30)
            assert prefetcher.stats.moved_blocks == moved
            pins = prefetcher.take("a2")
            assert pins is not None and len(pins.keys) == 4
            store.complete_load(pins)
        finally:
            prefetcher.close()
            connector.close()
    executor.shutdown()
