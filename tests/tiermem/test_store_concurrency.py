"""Concurrent prefetch jobs on a multi-thread executor never mix up blocks' bytes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from llmsys.tiermem.block import aligned_buffer
from llmsys.tiermem.store import StoreConfig, TieredStore
from llmsys.tiermem.tiers import CxlConfig, DramConfig, SsdConfig
from llmsys.tiermem.tiers.base import TierKind

from .helpers import BLOCK_BYTES, NAMESPACE, block_bytes_for, make_keys


def test_parallel_prefetch_jobs_keep_each_blocks_bytes(tmp_path: Path) -> None:
    config = StoreConfig(
        tiers=(
            DramConfig(40 * BLOCK_BYTES),
            CxlConfig(40 * BLOCK_BYTES),
            SsdConfig(tmp_path, 80 * BLOCK_BYTES),
        )
    )
    keys = make_keys(32)
    executor = ThreadPoolExecutor(4)
    with TieredStore(NAMESPACE, config, executor=executor) as store:
        # store 32 blocks through a 40-slot dram, then push them down with 40 fillers
        for i, key in enumerate(keys):
            handle = store.prepare_store([key])
            for k in handle.keys:
                store.write(handle, k, block_bytes_for(i).data)
            store.complete_store(handle)
        fillers = make_keys(40, offset=10_000)
        for j, key in enumerate(fillers):
            handle = store.prepare_store([key])
            for k in handle.keys:
                store.write(handle, k, block_bytes_for(1000 + j).data)
            store.complete_store(handle)
        assert TierKind.DRAM not in store.lookup(keys).tiers
        # eight jobs of four blocks each, run four at a time, some cxl -> dram, some ssd -> cxl
        handles = [
            store.prefetch(keys[i : i + 4], TierKind.DRAM if i % 8 else TierKind.CXL)
            for i in range(0, 32, 4)
        ]
        for h in handles:
            assert h.wait(30)
            assert h.error is None
        load = store.prepare_load(keys)
        outs = [aligned_buffer(BLOCK_BYTES) for _ in load.keys]
        assert store.read(load, outs) == 32
        for i, out in enumerate(outs):
            assert np.array_equal(np.frombuffer(out, dtype=np.uint8), block_bytes_for(i)), i
        store.complete_load(load)
    executor.shutdown()
