"""cxl backend probing and pacing; remote sharing, authentication and graceful failure."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from llmsys.tiermem import (
    CxlBackend,
    CxlConfig,
    DramConfig,
    ManualClock,
    MonotonicClock,
    RemoteConfig,
    SsdConfig,
    StoreConfig,
    TieredStore,
    TierKind,
    aligned_buffer,
    probe_cxl,
)
from llmsys.tiermem.tiers import CxlTier, RemoteTier
from llmsys.tiermem.tiers.cxl import _libnuma

from .conftest import REDIS_SERVER, _free_port
from .helpers import BLOCK_BYTES, NAMESPACE, block_bytes_for, make_keys


def _fake_sys(root: Path, cpulists: dict[int, str]) -> Path:
    for node, cpus in cpulists.items():
        d = root / "devices/system/node" / f"node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpus + "\n")
        (d / "meminfo").write_text(f"Node {node} MemTotal:       16384000 kB\n")
    return root


def test_probe_prefers_a_cpuless_numa_node_and_otherwise_emulates(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "dax0.0").touch()  # a regular file is not a device-DAX character device
    plain = _fake_sys(tmp_path / "a", {0: "0-1"})
    assert probe_cxl(plain, dev).backend is CxlBackend.EMULATED
    cxl_node = _fake_sys(tmp_path / "b", {0: "0-1", 1: ""})
    found = probe_cxl(cxl_node, dev)
    if _libnuma() is None:  # without libnuma a CPU-less node cannot be used
        assert found.backend is CxlBackend.EMULATED and "libnuma" in found.detail
    else:
        assert (found.backend, found.numa_node) == (CxlBackend.NUMA, 1)


def test_emulated_pacing_charges_latency_plus_bytes_over_bandwidth() -> None:
    clock = ManualClock()
    config = CxlConfig(
        4 * BLOCK_BYTES, backend=CxlBackend.EMULATED, bandwidth_bytes_per_s=1e9, latency_s=400e-9
    )
    tier = CxlTier(config, block_bytes=BLOCK_BYTES, clock=clock)
    key = make_keys(1)[0]
    tier.put(key, memoryview(block_bytes_for(0)))
    out = aligned_buffer(BLOCK_BYTES)
    tier.get_into(key, out)
    assert clock.now() == pytest.approx(2 * (400e-9 + BLOCK_BYTES / 1e9))
    described = tier.describe()
    assert described["backend"] == "emulated"
    assert described["configured_bandwidth_bytes_per_s"] == pytest.approx(1e9)
    tier.close()


def test_emulated_pacing_in_real_time_is_not_faster_than_configured() -> None:
    config = CxlConfig(4 * BLOCK_BYTES, backend=CxlBackend.EMULATED, bandwidth_bytes_per_s=0.5e9)
    tier = CxlTier(config, block_bytes=BLOCK_BYTES, clock=MonotonicClock())
    key = make_keys(1)[0]
    tier.put(key, memoryview(block_bytes_for(0)))
    out = aligned_buffer(BLOCK_BYTES)
    start = time.perf_counter()
    for _ in range(5):
        tier.get_into(key, out)
    assert time.perf_counter() - start >= 5 * BLOCK_BYTES / 0.5e9
    tier.close()


def _remote_store(host: str, port: int, **kw: object) -> TieredStore:
    config = StoreConfig(
        tiers=(
            DramConfig(2 * BLOCK_BYTES),
            RemoteConfig(16 * BLOCK_BYTES, host=host, port=port, **kw),
        )  # type: ignore[arg-type]
    )
    return TieredStore(NAMESPACE, config)


def test_two_engines_share_blocks_through_redis(
    redis_server: tuple[str, int], redis_client: redis.Redis
) -> None:
    keys = make_keys(3)
    with _remote_store(*redis_server) as writer, _remote_store(*redis_server) as reader:
        h = writer.prepare_store(keys[:2])
        for i, k in enumerate(h.keys):
            writer.write(h, k, memoryview(block_bytes_for(i)))
        writer.complete_store(h)
        writer._executor.submit(lambda: None).result()  # write-through job done
        hit = reader.lookup(keys)
        assert hit.tiers == (TierKind.REMOTE, TierKind.REMOTE)
        lh = reader.prepare_load(keys)
        outs = [aligned_buffer(BLOCK_BYTES) for _ in lh.keys]
        assert reader.read(lh, outs) == 2
        reader.complete_load(lh)
        assert np.array_equal(np.frombuffer(outs[1], dtype=np.uint8), block_bytes_for(1))
        assert reader.lookup(keys).tiers == (TierKind.DRAM, TierKind.DRAM)  # promoted


def test_unreachable_redis_never_raises_into_the_hot_path() -> None:
    port = _free_port()  # nothing listens here
    with _remote_store("127.0.0.1", port, socket_timeout_s=0.2) as store:
        keys = make_keys(2)
        h = store.prepare_store(keys)
        for i, k in enumerate(h.keys):
            store.write(h, k, memoryview(block_bytes_for(i)))
        store.complete_store(h)
        store._executor.submit(lambda: None).result()
        assert store.lookup(keys).tiers == (TierKind.DRAM, TierKind.DRAM)  # local tiers serve
        assert store.lookup(make_keys(2, offset=7)).num_blocks == 0
        remote = store.tier(TierKind.REMOTE)
        assert isinstance(remote, RemoteTier)
        assert not remote.available and remote.last_error
        assert remote.stats().errors >= 1
        assert store.describe()["tiers"][1]["available"] is False


def test_redis_password_auth(tmp_path: Path) -> None:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server binary not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
            "--requirepass",
            "s3cret",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        probe = redis.Redis(port=port, password="s3cret")
        for _ in range(200):
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        probe.close()
        key = make_keys(1)[0]
        clock = MonotonicClock()
        good = RemoteTier(
            RemoteConfig(4 * BLOCK_BYTES, port=port, password="s3cret"),
            block_bytes=BLOCK_BYTES,
            clock=clock,
        )
        bad = RemoteTier(
            RemoteConfig(4 * BLOCK_BYTES, port=port, password="wrong"),
            block_bytes=BLOCK_BYTES,
            clock=clock,
        )
        assert good.put(key, memoryview(block_bytes_for(0)))
        assert not bad.put(key, memoryview(block_bytes_for(0)))
        assert bad.stats().errors == 1 and "s3cret" not in repr(bad.config)
        assert good.ping() and not bad.ping()
        good.close()
        bad.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_four_tier_store_falls_back_to_redis_past_the_local_tiers(
    tmp_path: Path, redis_server: tuple[str, int], redis_client: redis.Redis
) -> None:
    host, port = redis_server
    config = StoreConfig(
        tiers=(
            DramConfig(BLOCK_BYTES),
            CxlConfig(BLOCK_BYTES, backend=CxlBackend.EMULATED, bandwidth_bytes_per_s=50e9),
            SsdConfig(tmp_path, BLOCK_BYTES),
            RemoteConfig(8 * BLOCK_BYTES, host=host, port=port),
        )
    )
    keys = make_keys(5)
    with TieredStore(NAMESPACE, config) as store:
        for i, key in enumerate(keys):
            h = store.prepare_store([key])
            store.write(h, key, memoryview(block_bytes_for(i)))
            store.complete_store(h)
            store._executor.submit(lambda: None).result()  # let write-through finish
        # store [0..4] into 1+1+1 local slots: [0, 1] live only in redis now
        hit = store.lookup(keys)
        assert hit.tiers == (
            TierKind.REMOTE,
            TierKind.REMOTE,
            TierKind.SSD,
            TierKind.CXL,
            TierKind.DRAM,
        )
        assert redis_client.dbsize() == 5  # every block was written through
        h = store.prepare_load(keys)
        outs = [aligned_buffer(BLOCK_BYTES) for _ in h.keys]
        assert store.read(h, outs) == 5
        store.complete_load(h)
        for i, out in enumerate(outs):
            assert np.array_equal(np.frombuffer(out, dtype=np.uint8), block_bytes_for(i))
