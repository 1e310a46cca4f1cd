"""kill -9 of a process writing to the ssd tier: reopening serves every block whose store
completed and never a torn one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from llmsys.tiermem import MonotonicClock, SsdConfig, aligned_buffer
from llmsys.tiermem.tiers import SsdTier

from .helpers import make_keys

BLOCK = 1 << 20  # big enough that kill -9 often lands inside a write
SLOTS = 48

CHILD = textwrap.dedent(
    """
    import sys, numpy as np
    from pathlib import Path
    from llmsys.tiermem import MonotonicClock, SsdConfig, Namespace, chain_keys
    from llmsys.tiermem.tiers import SsdTier
    ns = Namespace("test-model", "float16", "layers,kv,tokens", 4, 64 << 10)
    keys = chain_keys(ns, np.arange({n} * 4))
    aio = sys.argv[2] == "aio"
    config = SsdConfig(Path(sys.argv[1]), {n} * {block}, async_io=aio, overlap_min_bytes=0)
    tier = SsdTier(config, block_bytes={block}, clock=MonotonicClock())
    i = 0
    while True:  # overwrite slots round and round until killed
        slot_key = keys[i % {n}]
        tier.delete(slot_key)
        data = np.random.default_rng(i).integers(0, 256, {block}, dtype=np.uint8)
        tier.put(slot_key, memoryview(data))
        print(i, flush=True)  # only after put returned: this store completed
        i += 1
    """
).format(n=SLOTS, block=BLOCK)


def _payload(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, BLOCK, dtype=np.uint8)


@pytest.mark.parametrize(
    ("completed_before_kill", "write_mode"),
    [(30, "sync"), (75, "sync"), (30, "aio"), (50, "aio")],
    ids=["single-write-30", "single-write-75", "aio-payload-and-header-30", "aio-50"],
)
def test_kill_9_serves_completed_blocks_and_never_torn_ones(
    tmp_path: Path, completed_before_kill: int, write_mode: str
) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), write_mode],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert child.stdout is not None
    done: list[int] = []
    try:
        for line in child.stdout:
            done.append(int(line))
            if len(done) >= completed_before_kill:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert len(done) >= completed_before_kill, "writer died before the test could kill it"
    # The latest completed write of each slot key must be served; older ones were
    # replaced. A write in flight at the kill may or may not be served, but if it is,
    # its bytes must be exactly the payload of some write of that key.
    keys = make_keys(SLOTS)
    tier = SsdTier(SsdConfig(tmp_path, SLOTS * BLOCK), block_bytes=BLOCK, clock=MonotonicClock())
    latest = {i % SLOTS: i for i in done}
    in_flight = done[-1] + 1
    out = aligned_buffer(BLOCK)
    served = 0
    for slot_idx, key in enumerate(keys):
        got = tier.get_into(key, out)
        arr = np.frombuffer(out, dtype=np.uint8)
        candidates = [i for i in (latest.get(slot_idx), in_flight) if i is not None]
        candidates = [i for i in candidates if i % SLOTS == slot_idx]
        if got is None:
            # Only the key being rewritten at the kill (deleted, then torn) may be missing.
            assert slot_idx == in_flight % SLOTS or slot_idx not in latest
            continue
        served += 1
        assert any(np.array_equal(arr, _payload(i)) for i in candidates), slot_idx
    assert served >= len(latest) - 1
    tier.close()
