"""Fixtures of the tiermem tests: a real redis-server, tier factories, block helpers."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

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
    Tier,
    open_tier,
)

from .helpers import BLOCK_BYTES

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """Start a throwaway redis-server on a free loopback port; stop it afterwards."""
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server binary not installed (apt-get install redis-server)")
    workdir = tmp_path_factory.mktemp("redis")
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
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        for _ in range(200):
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                time.sleep(0.02)
        else:
            pytest.fail("redis-server did not start")
        yield ("127.0.0.1", port)
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def redis_client(redis_server: tuple[str, int]) -> Iterator[redis.Redis]:
    """A client of the test server; the database is flushed before each test."""
    client = redis.Redis(host=redis_server[0], port=redis_server[1])
    client.flushall()
    yield client
    client.close()


TIER_PARAMS = [
    "dram", "cxl-emulated", "cxl-dax-file", "ssd", "ssd-aio", "ssd-durable", "ssd-durable-sync",
    "remote", "dram-meta", "ssd-meta",
]  # fmt: skip


@pytest.fixture(params=TIER_PARAMS)
def make_tier(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[int], Tier]]:
    """Factory ``make_tier(capacity_blocks) -> Tier`` for each tier under contract."""
    name: str = request.param
    made: list[Tier] = []

    def factory(capacity_blocks: int) -> Tier:
        cap = capacity_blocks * BLOCK_BYTES
        clock = ManualClock() if name.endswith("meta") else MonotonicClock()
        meta = name.endswith("meta")
        if name.startswith("dram"):
            config: object = DramConfig(cap)
        elif name == "cxl-emulated":
            config = CxlConfig(cap, backend=CxlBackend.EMULATED, bandwidth_bytes_per_s=20e9)
        elif name == "cxl-dax-file":
            (tmp_path / "dax0.0").touch()  # a regular file stands in for /dev/daxX.Y
            config = CxlConfig(cap, backend=CxlBackend.DAX, dax_path=tmp_path / "dax0.0")
        elif name == "ssd-aio":  # hash while AIO writes the payload, header after
            config = SsdConfig(tmp_path, cap, overlap_min_bytes=0)
        elif name.startswith("ssd-durable"):  # payload, fdatasync, header, fdatasync
            aio = name == "ssd-durable"
            config = SsdConfig(tmp_path, cap, durable=True, async_io=aio, overlap_min_bytes=0)
        elif name.startswith("ssd"):
            config = SsdConfig(tmp_path, cap)
        else:
            host, port = request.getfixturevalue("redis_server")
            request.getfixturevalue("redis_client")  # flushes the database
            config = RemoteConfig(cap, host=host, port=port)
        tier = open_tier(config, block_bytes=BLOCK_BYTES, clock=clock, metadata_only=meta)  # type: ignore[arg-type]
        made.append(tier)
        return tier

    factory.name = name  # type: ignore[attr-defined]
    yield factory
    for tier in made:
        tier.close()
