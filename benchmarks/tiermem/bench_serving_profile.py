"""Where serving time goes: engine phases, store-lock waits and holds, CPU per thread.

Serves the serving benchmark's default workload (chat, CI size, ratio 4) under the chosen
configurations, interleaved repetitions, and reports for each run: wall time, the engine
thread's CPU time, the time of each engine phase, how long each thread role waited for and
held the store lock, and each thread role's CPU time. It answers "does the engine wait on
the store lock?" and "what do the background threads cost?" with numbers::

    python benchmarks/tiermem/bench_serving_profile.py [--configs itme,unbounded] [--repeats 2]

Instrumentation reaches into the store (it swaps the store lock for a timing wrapper) -
a profiler's licence; the library has no hooks for it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from llmsys.core.model import load_bundled_model
from llmsys.core.provenance import config_hash, git_sha
from llmsys.tiermem.keys import Namespace
from llmsys.tiermem.serving.bench import ServingBenchOptions, build_requests
from llmsys.tiermem.serving.compare import CacheConfig, parse_configs, tier_configs
from llmsys.tiermem.serving.connector import TieredKVConnector
from llmsys.tiermem.serving.engine import ServingEngine
from llmsys.tiermem.serving.foresight import ForesightPrefetcher
from llmsys.tiermem.serving.runner import ModelRunner
from llmsys.tiermem.serving.workloads import distinct_blocks
from llmsys.tiermem.store import StoreConfig, TieredStore

RESULTS = Path(__file__).resolve().parents[2] / "results"


def _role() -> str:
    """Thread role: its name less the pool worker number (``itme-store_1``: ``itme-store``)."""
    return threading.current_thread().name.split("_")[0]


class TimedLock:
    """A re-entrant lock that sums, per thread role, the time waited for it and held."""

    def __init__(self) -> None:
        self._inner = threading.RLock()
        self._depth = threading.local()
        self.wait_s: collections.Counter[str] = collections.Counter()
        self.hold_s: collections.Counter[str] = collections.Counter()
        self.acquisitions: collections.Counter[str] = collections.Counter()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        t0 = time.perf_counter()
        ok = self._inner.acquire(blocking, timeout)
        if ok:
            depth = getattr(self._depth, "n", 0)
            if depth == 0:
                now = time.perf_counter()
                self.wait_s[_role()] += now - t0
                self.acquisitions[_role()] += 1
                self._depth.since = now
            self._depth.n = depth + 1
        return ok

    def release(self) -> None:
        self._depth.n -= 1
        if self._depth.n == 0:
            self.hold_s[_role()] += time.perf_counter() - self._depth.since
        self._inner.release()

    __enter__ = acquire

    def __exit__(self, *exc: object) -> None:
        self.release()

    # threading.Condition protocol: a wait releases every level and restores them after
    def _is_owned(self) -> bool:
        return self._inner._is_owned()  # type: ignore[attr-defined,no-any-return]

    def _release_save(self) -> int:
        depth: int = self._depth.n
        for _ in range(depth):
            self.release()
        return depth

    def _acquire_restore(self, depth: int) -> None:
        for _ in range(depth):
            self.acquire()


def _thread_cpu_s() -> dict[int, tuple[str, float]]:
    """CPU seconds of each live thread of this process, with its role."""
    roles = {t.native_id: t.name.split("_")[0] for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        out[int(tid)] = (roles.get(int(tid), "other"), (int(fields[11]) + int(fields[12])) / tick)
    return out


def _timed(obj: object, name: str, phases: collections.Counter[str]) -> None:
    """Shadow ``obj.name`` with a wrapper adding its wall time to ``phases[name]``."""
    fn: Callable[..., Any] = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            phases[name] += time.perf_counter() - t0

    setattr(obj, name, wrapper)


def profile_run(
    runner: ModelRunner, namespace: Namespace, requests: Sequence[Any], cfg: CacheConfig
) -> dict[str, Any]:
    """Serve ``requests`` once under ``cfg`` (ratio 4) with the instrumentation on."""
    footprint = distinct_blocks(requests, namespace.block_tokens) * namespace.block_bytes
    phases: collections.Counter[str] = collections.Counter()
    lock = TimedLock()
    with tempfile.TemporaryDirectory(prefix="itme-prof-") as tmp:
        connector = prefetcher = store = executor = None
        if cfg is not CacheConfig.RECOMPUTE:
            tiers = tier_configs(cfg, footprint, 4, namespace.block_bytes, Path(tmp))
            executor = ThreadPoolExecutor(2, thread_name_prefix="itme-store")
            store = TieredStore(namespace, StoreConfig(tiers=tiers), executor=executor)
            store._lock = lock  # type: ignore[assignment]
            store._moved = threading.Condition(lock)  # type: ignore[arg-type]
            connector = TieredKVConnector(store, runner, namespace)
            for name in ("start_load_kv", "save_kv", "wait_for_save", "update_state_after_alloc"):
                _timed(connector, name, phases)
            if cfg is CacheConfig.ITME:
                prefetcher = ForesightPrefetcher(store, lookahead=1)
                _timed(prefetcher, "plan", phases)
        for name in ("prefill", "decode"):
            _timed(runner, name, phases)
        engine = ServingEngine(runner, connector, prefetcher)
        cpu0, main0 = _thread_cpu_s(), time.thread_time()
        t0 = time.perf_counter()
        engine.serve(requests)
        wall_s = time.perf_counter() - t0
        main_cpu_s, cpu1 = time.thread_time() - main0, _thread_cpu_s()
        for name in ("prefill", "decode"):
            delattr(runner, name)  # back to the class's methods
        if prefetcher is not None:
            prefetcher.close()
        if connector is not None:
            connector.close()
        if store is not None:
            store.close()
        if executor is not None:
            executor.shutdown()
    cpu: collections.Counter[str] = collections.Counter()
    for tid, (role, seconds) in cpu1.items():
        cpu[role] += seconds - cpu0.get(tid, (role, 0.0))[1]
    return {
        "config": cfg.value,
        "wall_s": wall_s,
        "engine_cpu_s": main_cpu_s,
        "phase_s": dict(phases),
        "lock_wait_s": dict(lock.wait_s),
        "lock_hold_s": dict(lock.hold_s),
        "lock_acquisitions": dict(lock.acquisitions),
        "thread_cpu_s": {k: v for k, v in cpu.items() if v > 0},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="cpu-offload,itme,unbounded")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repetitions")
    parser.add_argument("--footprint-mib", type=float, default=120.0)
    args = parser.parse_args(argv)
    configs = parse_configs(args.configs)
    options = ServingBenchOptions(footprint_mib=args.footprint_mib, ratios=(4,), miss_requests=0)
    torch.set_num_threads(options.threads)
    bundled = load_bundled_model()
    runner = ModelRunner(bundled, options.block_tokens, options.prefill_chunk_blocks)
    g = runner.geometry
    namespace = Namespace(
        bundled.fingerprint, str(g.dtype).removeprefix("torch."), g.layout, g.block_tokens,
        g.block_bytes,
    )  # fmt: skip

    def tokenize(text: str) -> list[int]:
        return list(bundled.tokenizer(text, add_special_tokens=False)["input_ids"])

    requests = build_requests(options, tokenize, g.bytes_per_token)
    runs = []
    for rep in range(args.repeats):
        for cfg in configs:
            run = profile_run(runner, namespace, requests, cfg)
            run["repeat"] = rep
            runs.append(run)
            print(f"  {cfg.value} #{rep + 1}: {run['wall_s']:.1f} s", file=sys.stderr, flush=True)
    print(f"{'config':12} {'wall s':>7} {'engine cpu s':>12} {'engine lock wait s':>18}  "
          "lock hold s by thread / background cpu s")  # fmt: skip
    for run in runs:
        hold = ", ".join(f"{k} {v:.2f}" for k, v in sorted(run["lock_hold_s"].items()))
        bg = ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(run["thread_cpu_s"].items()) if k != "MainThread"
        )
        wait = run["lock_wait_s"].get("MainThread", 0.0)
        print(f"{run['config']:12} {run['wall_s']:7.1f} {run['engine_cpu_s']:12.2f} {wait:18.4f}  "
              f"hold: {hold} | cpu: {bg}")  # fmt: skip
    summary = {
        "requests": len(requests),
        "runs": runs,
        "git_sha": git_sha(),
        "config_hash": config_hash({"configs": args.configs, "footprint_mib": args.footprint_mib}),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tiermem_serving_profile.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
