"""Benchmark every tiermem tier against the hardware ceiling measured in the same run.

For each block size (default 1, 4 and 16 MiB), interleaving op by op and taking medians:

- dram get/put vs a numpy copy of the same bytes between the same kind of preallocated,
  page-aligned buffers (get: arena slot -> caller buffer; put: caller buffer -> slot);
- ssd get/put vs plain O_DIRECT ``os.preadv``/``os.pwritev`` of the same bytes to a
  preallocated file in the same directory (the tier adds its 4 KiB header page and the
  xxh3 checksum of every block, which is part of what is measured; blocks of 2 MiB and
  more are hashed while native AIO writes them, see ``put_mode``), and a put whose
  checksum is already known (what the tier costs besides the hash);
- emulated cxl get throughput vs its configured bandwidth (default: measured memcpy x 0.1);
- remote (a redis-server started for the run on a free loopback port) get throughput;
- xxh3_64 checksum throughput vs memcpy;
- ``lookup`` cost per block over a 10,000-block cached prefix, and key hashing per block.

Every get fills a caller-provided, preallocated buffer, baseline included. Headline ratios
in the JSON line are the worst over the block sizes; ``by_size`` has each size.

Usage: python benchmarks/tiermem/bench_tiers.py [--sizes-mib 1 4 16] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import redis

from llmsys.core.provenance import config_hash, git_sha
from llmsys.tiermem import (
    CxlBackend,
    CxlConfig,
    DramConfig,
    MonotonicClock,
    Namespace,
    RemoteConfig,
    SsdConfig,
    StoreConfig,
    TieredStore,
    aligned_buffer,
    chain_keys,
    checksum,
)
from llmsys.tiermem.tiers import CxlTier, DramTier, RemoteTier, SsdTier
from llmsys.tiermem.tiers.cxl import measured_memcpy_bytes_per_s

CLOCK = MonotonicClock()
MIB = 1 << 20


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _stats(times: list[float], nbytes: int) -> dict[str, float]:
    arr = np.asarray(times)
    return {
        "median_s": float(np.median(arr)),
        "p99_s": float(np.percentile(arr, 99)),
        "gb_per_s": nbytes / float(np.median(arr)) / 1e9,
    }


def _keys(n: int, block_bytes: int, salt: int = 0) -> list[Any]:
    ns = Namespace("bench", "float16", "contiguous", 16, block_bytes)
    return chain_keys(ns, np.arange(n * 16) + (salt % 1000) * 1_000_003)


def _arrays(n: int, block_bytes: int) -> tuple[np.ndarray, memoryview, memoryview]:
    arena = np.frombuffer(aligned_buffer(n * block_bytes), dtype=np.uint8).reshape(n, block_bytes)
    src = aligned_buffer(block_bytes)
    np.frombuffer(src, dtype=np.uint8)[:] = np.random.default_rng(0).integers(
        0, 256, block_bytes, dtype=np.uint8
    )
    arena[:] = np.frombuffer(src, dtype=np.uint8)
    return arena, src, aligned_buffer(block_bytes)


def bench_dram(block_bytes: int, n: int, rounds: int) -> dict[str, Any]:
    """dram tier get/put vs numpy copy of the same bytes, interleaved per op."""
    arena, src, out = _arrays(n, block_bytes)
    outa = np.frombuffer(out, dtype=np.uint8)
    srca = np.frombuffer(src, dtype=np.uint8)
    tier = DramTier(DramConfig(n * block_bytes), block_bytes=block_bytes, clock=CLOCK)
    keys = _keys(n, block_bytes)
    for key in keys:
        tier.put(key, src)
    t: dict[str, list[float]] = {"copy_get": [], "get": [], "copy_put": [], "put": []}
    for r in range(rounds + 1):  # round 0 warms up
        for i, key in enumerate(keys):
            # Odd rounds run the tier first: whichever op goes second can find caches or
            # the device in another state, so each side goes first half of the time.
            if r % 2:
                g = _timed(lambda key=key: tier.get_into(key, out))
                cg = _timed(lambda i=i: np.copyto(outa, arena[i]))
                tier.delete(key)
                p = _timed(lambda key=key: tier.put(key, src))
                cp = _timed(lambda i=i: np.copyto(arena[i], srca))
            else:
                cg = _timed(lambda i=i: np.copyto(outa, arena[i]))
                g = _timed(lambda key=key: tier.get_into(key, out))
                cp = _timed(lambda i=i: np.copyto(arena[i], srca))
                tier.delete(key)
                p = _timed(lambda key=key: tier.put(key, src))
            if r:
                for name, value in zip(t, (cg, g, cp, p), strict=True):
                    t[name].append(value)
    tier.close()
    res = {name: _stats(v, block_bytes) for name, v in t.items()}
    return {
        **{f"{k}_gb_per_s": v["gb_per_s"] for k, v in res.items()},
        "get_p99_s": res["get"]["p99_s"],
        "get_vs_memcpy": res["copy_get"]["median_s"] / res["get"]["median_s"],
        "put_vs_memcpy": res["copy_put"]["median_s"] / res["put"]["median_s"],
    }


def bench_ssd(block_bytes: int, n: int, rounds: int, cache_dir: Path) -> dict[str, Any]:
    """ssd tier get/put vs raw O_DIRECT preadv/pwritev of the same bytes, interleaved.

    ``put`` hashes the payload as a put of fresh bytes must; ``put_known_checksum`` is the
    put of a block whose checksum travels with it (a demotion from a tier that verified
    it), which shows what the tier costs besides the hash.
    """
    _, src, out = _arrays(1, block_bytes)
    digest = checksum(src)
    work = Path(tempfile.mkdtemp(prefix="bench-ssd-", dir=cache_dir))
    raw_path = work / "raw.bin"
    fd = os.open(raw_path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
    os.ftruncate(fd, n * block_bytes)
    tier = SsdTier(SsdConfig(work, n * block_bytes), block_bytes=block_bytes, clock=CLOCK)
    keys = _keys(n, block_bytes)
    names = ("raw_write", "put", "raw_read", "get", "put_known_checksum")
    t: dict[str, list[float]] = {name: [] for name in names}
    try:
        for r in range(rounds + 1):
            for i, key in enumerate(keys):
                tier.delete(key)
                # Each side goes first in half the rounds (see bench_dram).
                if r % 2:
                    p = _timed(lambda key=key: tier.put(key, src))
                    rw = _timed(lambda i=i: os.pwritev(fd, [src], i * block_bytes))
                    g = _timed(lambda key=key: tier.get_into(key, out))
                    rr = _timed(lambda i=i: os.preadv(fd, [out], i * block_bytes))
                else:
                    rw = _timed(lambda i=i: os.pwritev(fd, [src], i * block_bytes))
                    p = _timed(lambda key=key: tier.put(key, src))
                    rr = _timed(lambda i=i: os.preadv(fd, [out], i * block_bytes))
                    g = _timed(lambda key=key: tier.get_into(key, out))
                tier.delete(key)
                pk = _timed(lambda key=key: tier.put(key, src, digest))
                if r:
                    for name, value in zip(names, (rw, p, rr, g, pk), strict=True):
                        t[name].append(value)
        assert tier.stats().corrupt == 0 and tier.stats().misses == 0
        overlap = tier.overlap_puts
    finally:
        tier.close()
        os.close(fd)
        shutil.rmtree(work, ignore_errors=True)
    res = {name: _stats(v, block_bytes) for name, v in t.items()}
    return {
        **{f"{k}_gb_per_s": v["gb_per_s"] for k, v in res.items()},
        "put_mode": "hash-while-aio-writes" if overlap else "hash-then-one-write",
        "get_vs_raw_odirect": res["raw_read"]["median_s"] / res["get"]["median_s"],
        "put_vs_raw_odirect": res["raw_write"]["median_s"] / res["put"]["median_s"],
        "put_known_checksum_vs_raw_odirect": (
            res["raw_write"]["median_s"] / res["put_known_checksum"]["median_s"]
        ),
    }


def bench_cxl(block_bytes: int, n: int, rounds: int, bandwidth: float | None) -> dict[str, Any]:
    """Emulated cxl get throughput vs its configured bandwidth."""
    _, src, out = _arrays(1, block_bytes)
    config = CxlConfig(
        n * block_bytes, backend=CxlBackend.EMULATED, bandwidth_bytes_per_s=bandwidth
    )
    tier = CxlTier(config, block_bytes=block_bytes, clock=CLOCK)
    keys = _keys(n, block_bytes)
    for key in keys:
        tier.put(key, src)
    times = []
    for r in range(rounds + 1):
        for key in keys:
            g = _timed(lambda key=key: tier.get_into(key, out))
            if r:
                times.append(g)
    desc = tier.describe()
    tier.close()
    got = _stats(times, block_bytes)["gb_per_s"]
    configured = desc["configured_bandwidth_bytes_per_s"] / 1e9
    return {
        "backend": desc["backend"],
        "get_gb_per_s": got,
        "configured_gb_per_s": configured,
        "latency_s": desc["latency_s"],
        "rel_error": got / configured - 1.0,
    }


def bench_remote(block_bytes: int, n: int, rounds: int, address: tuple[str, int]) -> dict[str, Any]:
    """Remote tier single-get and pipelined get_many throughput on a loopback redis."""
    _, src, out = _arrays(1, block_bytes)
    host, port = address
    tier = RemoteTier(
        RemoteConfig(n * block_bytes, host=host, port=port, socket_timeout_s=10.0),
        block_bytes=block_bytes,
        clock=CLOCK,
    )
    keys = _keys(n, block_bytes, salt=block_bytes // MIB)
    tier.put_many(keys, [src] * n)
    times = []
    for r in range(rounds + 1):
        for key in keys:
            g = _timed(lambda key=key: tier.get_into(key, out))
            if r:
                times.append(g)
    outs = [aligned_buffer(block_bytes) for _ in keys]
    many = min(_timed(lambda: tier.get_many_into(keys, outs)) for _ in range(rounds))
    ok = tier.stats().misses == 0
    for key in keys:
        tier.delete(key)
    tier.close()
    return {
        "get_mib_per_s": block_bytes / float(np.median(times)) / MIB,
        "get_many_mib_per_s": n * block_bytes / many / MIB,
        "all_hits": ok,
    }


def bench_checksum(block_bytes: int, rounds: int) -> dict[str, float]:
    """xxh3_64 throughput vs memcpy on the same buffer, interleaved."""
    _, src, out = _arrays(1, block_bytes)
    srca, outa = np.frombuffer(src, dtype=np.uint8), np.frombuffer(out, dtype=np.uint8)
    c, h = [], []
    for _ in range(max(rounds * 5, 10)):
        c.append(_timed(lambda: np.copyto(outa, srca)))
        h.append(_timed(lambda: checksum(src)))
    memcpy, xxh3 = _stats(c, block_bytes)["gb_per_s"], _stats(h, block_bytes)["gb_per_s"]
    return {"memcpy_gb_per_s": memcpy, "xxh3_gb_per_s": xxh3, "xxh3_vs_memcpy": xxh3 / memcpy}


def bench_lookup(num_blocks: int, repeats: int) -> dict[str, float]:
    """lookup() per block over a fully cached prefix of ``num_blocks``; hashing per block."""
    block_bytes = 4096  # lookup never touches bytes; small blocks keep the arena small
    ns = Namespace("bench-lookup", "float16", "contiguous", 16, block_bytes)
    tokens = np.arange(num_blocks * 16)
    hash_s = min(_timed(lambda: chain_keys(ns, tokens)) for _ in range(3))
    keys = chain_keys(ns, tokens)
    config = StoreConfig(tiers=(DramConfig(num_blocks * block_bytes),))
    data = aligned_buffer(block_bytes)
    with TieredStore(ns, config) as store:
        for start in range(0, num_blocks, 1000):
            h = store.prepare_store(keys[start : start + 1000])
            for key in h.keys:
                store.write(h, key, data)
            store.complete_store(h)
        assert store.lookup(keys).num_blocks == num_blocks
        times = [_timed(lambda: store.lookup(keys)) for _ in range(repeats)]
    return {
        "lookup_us_per_block": float(np.median(times)) / num_blocks * 1e6,
        "lookup_p99_us_per_block": float(np.percentile(times, 99)) / num_blocks * 1e6,
        "hash_us_per_block": hash_s / num_blocks * 1e6,
    }


def _start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes] | None, tuple[str, int] | None]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        return None, None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(250):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.02)
    client.close()
    return proc, ("127.0.0.1", port)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes-mib", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument(
        "--bytes-per-size-mib",
        type=int,
        default=128,
        help="blocks per size = this / size (at least 4)",
    )
    p.add_argument("--rounds", type=int, default=4, help="measured rounds over the blocks")
    p.add_argument("--cache-dir", default="results", help="O_DIRECT-capable directory")
    p.add_argument(
        "--cxl-bandwidth-gb-per-s",
        type=float,
        default=None,
        help="emulated cxl bandwidth (default: measured memcpy x 0.1)",
    )
    p.add_argument("--lookup-blocks", type=int, default=10_000)
    p.add_argument("--no-redis", action="store_true", help="skip the remote tier")
    p.add_argument("--out", default="results/bench_tiers.json")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    cache_dir = Path(args.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    bandwidth = None if args.cxl_bandwidth_gb_per_s is None else args.cxl_bandwidth_gb_per_s * 1e9
    redis_dir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    proc, address = (None, None) if args.no_redis else _start_redis(redis_dir)
    by_size: dict[str, dict[str, Any]] = {}
    try:
        memcpy_ref = measured_memcpy_bytes_per_s()
        for mib in args.sizes_mib:
            block = mib * MIB
            n = max(4, args.bytes_per_size_mib // mib)
            row: dict[str, Any] = {"blocks": n}
            row["dram"] = bench_dram(block, n, args.rounds)
            row["ssd"] = bench_ssd(block, n, args.rounds, cache_dir)
            row["cxl"] = bench_cxl(block, min(n, 8), args.rounds, bandwidth)
            row["checksum"] = bench_checksum(block, args.rounds)
            if address is not None:
                row["remote"] = bench_remote(block, min(n, 8), args.rounds, address)
            by_size[f"{mib}_mib"] = row
            print(f"# {mib} MiB done", file=sys.stderr)
        lookup = bench_lookup(args.lookup_blocks, repeats=25)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(redis_dir, ignore_errors=True)

    print(
        f"{'block':>6} | {'memcpy':>7} {'dram get':>9} {'ratio':>5} {'put':>6} {'ratio':>5} | "
        f"{'od rd':>6} {'ssd get':>7} {'ratio':>5} {'od wr':>6} {'ssd put':>7} {'ratio':>5} | "
        f"{'cxl':>5} {'conf':>5} | {'redis':>8} | {'xxh3':>5}"
    )
    for size, row in by_size.items():
        d, s, c, h = row["dram"], row["ssd"], row["cxl"], row["checksum"]
        redis_mib = row.get("remote", {}).get("get_mib_per_s", float("nan"))
        print(
            f"{size:>6} | {d['copy_get_gb_per_s']:7.2f} {d['get_gb_per_s']:9.2f} "
            f"{d['get_vs_memcpy']:5.2f} {d['put_gb_per_s']:6.2f} {d['put_vs_memcpy']:5.2f} | "
            f"{s['raw_read_gb_per_s']:6.2f} {s['get_gb_per_s']:7.2f} "
            f"{s['get_vs_raw_odirect']:5.2f} {s['raw_write_gb_per_s']:6.2f} "
            f"{s['put_gb_per_s']:7.2f} {s['put_vs_raw_odirect']:5.2f} | "
            f"{c['get_gb_per_s']:5.2f} {c['configured_gb_per_s']:5.2f} | {redis_mib:8.1f} | "
            f"{h['xxh3_gb_per_s']:5.1f}"
        )
    print(
        "(GB/s = 1e9 bytes/s; redis in MiB/s; ratios are tier/baseline throughput, "
        "medians of interleaved ops)"
    )
    for size, row in by_size.items():
        s = row["ssd"]
        print(
            f"ssd put {size}: {s['put_mode']}; with a known checksum (no hash) "
            f"{s['put_known_checksum_vs_raw_odirect']:.2f} of raw"
        )
    print(
        f"lookup: {lookup['lookup_us_per_block']:.3f} us/block over {args.lookup_blocks} "
        f"blocks; hashing {lookup['hash_us_per_block']:.3f} us/block"
    )

    rows = list(by_size.values())
    worst_cxl = max(rows, key=lambda r: abs(r["cxl"]["rel_error"]))["cxl"]
    remote_rows = [r["remote"]["get_mib_per_s"] for r in rows if "remote" in r]
    result = {
        "dram_get_vs_memcpy": min(r["dram"]["get_vs_memcpy"] for r in rows),
        "dram_put_vs_memcpy": min(r["dram"]["put_vs_memcpy"] for r in rows),
        "ssd_get_vs_raw_odirect": min(r["ssd"]["get_vs_raw_odirect"] for r in rows),
        "ssd_put_vs_raw_odirect": min(r["ssd"]["put_vs_raw_odirect"] for r in rows),
        "ssd_put_known_checksum_vs_raw_odirect": min(
            r["ssd"]["put_known_checksum_vs_raw_odirect"] for r in rows
        ),
        "cxl_backend": worst_cxl["backend"],
        "cxl_get_gb_per_s": worst_cxl["get_gb_per_s"],
        "cxl_configured_gb_per_s": worst_cxl["configured_gb_per_s"],
        "cxl_latency_s": worst_cxl["latency_s"],
        "cxl_max_rel_error": worst_cxl["rel_error"],
        "redis_get_mib_per_s": min(remote_rows) if remote_rows else None,
        "lookup_us_per_block": lookup["lookup_us_per_block"],
        "hash_us_per_block": lookup["hash_us_per_block"],
        "xxh3_vs_memcpy": min(r["checksum"]["xxh3_vs_memcpy"] for r in rows),
        "memcpy_ref_gb_per_s": memcpy_ref / 1e9,
        "by_size": by_size,
        "git_sha": git_sha(),
        "config_hash": config_hash(cfg),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
