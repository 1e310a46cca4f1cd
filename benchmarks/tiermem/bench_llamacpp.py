"""llama-cpp-python prefix caches side by side: LlamaDiskCache, LlamaRAMCache, TieredLlama.

Serves the same requests - the serving issue's chat workload (multi-turn sessions over a
shared system prompt, served round-robin) - through three engines with the same model,
context, thread count and ``logits_all`` setting, greedy decoding:

- ``disk``: plain ``Llama`` with ``LlamaDiskCache`` (whole ``save_state``/``load_state``);
- ``ram``: plain ``Llama`` with ``LlamaRAMCache`` (the same, in memory);
- ``llmsys``: :class:`llmsys.tiermem.llamacpp.TieredLlama` (per-sequence state chunks in
  dram -> ssd tiers).

Every cache gets the same byte budget (``--capacity-mib``; default: the KV of the
workload's distinct full chunks, i.e. exactly enough to hold every distinct prefix once);
llmsys splits it half dram, half ssd. Each round builds fresh engines and caches and runs
the configurations in rotating order; totals are medians over rounds. Evaluated tokens
(prompt and generated tokens run through ``Llama.eval``) explain the times. A cache-less
engine (``none``) gives the reference outputs: ``llamacpp_outputs_identical`` says whether
every llmsys output equals it (``--no-reference`` skips it and compares with the
LlamaDiskCache run instead); ``mismatched_requests`` lists the differences of each config.

Usage: python benchmarks/tiermem/bench_llamacpp.py [--footprint-mib 16] [--sessions 3]
    [--block-tokens 32] [--capacity-mib MIB] [--logits-all] [--rounds 1] [--no-reference]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from llama_cpp import Llama, LlamaDiskCache, LlamaRAMCache

from llmsys.core.machine import o_direct_supported
from llmsys.core.model import bundled_gguf_path
from llmsys.core.provenance import config_hash, git_sha
from llmsys.tiermem import DramConfig, SsdConfig, StoreConfig
from llmsys.tiermem.llamacpp import PrefixCacheConfig, TieredLlama
from llmsys.tiermem.serving.workloads import Request, chat_workload, distinct_blocks

RESULTS = Path(__file__).resolve().parents[2] / "results"
CONFIGS = ("disk", "ram", "llmsys")


@dataclass
class RunResult:
    """One configuration served once over the whole workload."""

    name: str
    total_s: float
    latencies_s: list[float]
    texts: list[str]
    evaluated_tokens: int
    detail: dict[str, Any] = field(default_factory=dict)


def _serve(name: str, llm: Llama, requests: Sequence[Request]) -> RunResult:
    evaluated = [0]
    plain_eval = llm.eval

    def counting_eval(tokens: Sequence[int]) -> None:
        evaluated[0] += len(tokens)
        plain_eval(tokens)

    llm.eval = counting_eval  # type: ignore[method-assign]
    latencies: list[float] = []
    texts: list[str] = []
    sink = io.StringIO()  # LlamaDiskCache prints to stderr on every store
    with contextlib.redirect_stderr(sink):
        # warm-up: shorter than one chunk, so no cache stores a reusable workload prefix
        llm.create_completion([llm.token_bos()], max_tokens=2, temperature=0.0, top_k=1)
        evaluated[0] = 0
        start = time.perf_counter()
        for req in requests:
            t0 = time.perf_counter()
            out = llm.create_completion(
                list(req.prompt_ids),
                max_tokens=req.max_new_tokens,
                temperature=0.0,
                top_k=1,
                seed=0,
            )
            latencies.append(time.perf_counter() - t0)
            texts.append(str(out["choices"][0]["text"]))  # type: ignore[index]
    total = time.perf_counter() - start
    return RunResult(name, total, latencies, texts, evaluated[0])


def _make(
    name: str, args: argparse.Namespace, capacity_bytes: int, scratch: Path
) -> tuple[Llama, Callable[[], dict[str, Any]]]:
    kw: dict[str, Any] = {
        "n_ctx": args.n_ctx,
        "n_threads": args.threads,
        "n_threads_batch": args.threads,
        "logits_all": args.logits_all,
        "verbose": False,
        "seed": 0,
    }
    if name == "llmsys":
        ssd_dir = scratch / "llmsys-ssd"
        ssd_dir.mkdir()
        dram = capacity_bytes // 2
        tiers: tuple[Any, ...] = (DramConfig(capacity_bytes=capacity_bytes),)
        if o_direct_supported(ssd_dir):
            tiers = (DramConfig(dram), SsdConfig(ssd_dir, capacity_bytes - dram))
        llm = TieredLlama(
            args.model,
            prefix_cache=PrefixCacheConfig(args.block_tokens, store=StoreConfig(tiers=tiers)),
            **kw,
        )
        return llm, lambda: {
            **asdict(llm.prefix_stats()),
            "tiers": [t.kind.value for t in llm.store.tiers],
        }
    llm = Llama(model_path=args.model, **kw)
    if name == "ram":
        llm.set_cache(LlamaRAMCache(capacity_bytes=capacity_bytes))
    elif name == "disk":
        llm.set_cache(LlamaDiskCache(str(scratch / "disk-cache"), capacity_bytes=capacity_bytes))
    return llm, lambda: {}


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF path (default: bundled SmolLM2)")
    parser.add_argument("--footprint-mib", type=float, default=16.0, help="workload size")
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--block-tokens", type=int, default=32)
    parser.add_argument("--capacity-mib", type=float, default=None, help="per-cache budget")
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--logits-all", action="store_true")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the cache-less engine (identity is then checked across caches only)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_llamacpp.json")
    args = parser.parse_args(argv)
    args.model = str(args.model or bundled_gguf_path())
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")

    small = StoreConfig(tiers=(DramConfig(capacity_bytes=64 << 20),))
    probe = TieredLlama(
        args.model,
        prefix_cache=PrefixCacheConfig(args.block_tokens, store=small),
        n_ctx=args.n_ctx,
        n_threads=1,
        verbose=False,
    )
    kv_token_bytes = probe.codec.skeleton.kv_token_bytes
    chunk_bytes = probe.codec.block_bytes

    def tokenize(text: str) -> list[int]:
        return probe.tokenize(text.encode(), add_bos=False)

    requests = chat_workload(
        tokenize,
        target_footprint_bytes=int(args.footprint_mib * (1 << 20)),
        bytes_per_token=kv_token_bytes,
        block_tokens=args.block_tokens,
        sessions=args.sessions,
        max_new_tokens=args.max_new_tokens,
    )
    probe.close()
    footprint_bytes = distinct_blocks(requests, args.block_tokens) * chunk_bytes
    capacity = int(args.capacity_mib * (1 << 20)) if args.capacity_mib else footprint_bytes
    names = (() if args.no_reference else ("none",)) + CONFIGS
    runs: dict[str, list[RunResult]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            with tempfile.TemporaryDirectory(dir=RESULTS if RESULTS.is_dir() else None) as tmp:
                llm, detail = _make(name, args, capacity, Path(tmp))
                try:
                    run = _serve(name, llm, requests)
                    run.detail = detail()
                finally:
                    llm.close()
            runs[name].append(run)
            print(f"  round {r} {name}: {run.total_s:.1f} s", file=sys.stderr, flush=True)

    reference = runs[names[0]][0].texts  # no cache, or LlamaDiskCache with --no-reference
    mismatched = {
        n: sorted(
            {
                requests[i].request_id
                for run in rs
                for i, t in enumerate(run.texts)
                if t != reference[i]
            }
        )
        for n, rs in runs.items()
    }
    identical = not mismatched["llmsys"]
    total = {n: statistics.median(run.total_s for run in rs) for n, rs in runs.items()}
    print(
        f"{len(requests)} chat requests, {sum(len(q.prompt_ids) for q in requests)} prompt "
        f"tokens; cache budget {capacity / 2**20:.1f} MiB each; logits_all={args.logits_all}"
    )
    print(f"{'config':<8} {'total_s':>8} {'p50_s':>7} {'p99_s':>7} {'evaluated_tokens':>17}")
    summary: dict[str, Any] = {}
    for n, rs in runs.items():
        lat = [x for run in rs for x in run.latencies_s]
        ev = rs[0].evaluated_tokens
        print(f"{n:<8} {total[n]:8.2f} {_p(lat, 50):7.3f} {_p(lat, 99):7.3f} {ev:17d}")
        summary[n] = {
            "total_s": round(total[n], 3),
            "latency_p50_s": round(_p(lat, 50), 4),
            "latency_p99_s": round(_p(lat, 99), 4),
            "evaluated_tokens": ev,
            "mismatched_requests": mismatched[n],
            "detail": rs[0].detail,
            "texts": rs[0].texts,
        }
    cfg = {k: v for k, v in vars(args).items() if k != "out"}
    cfg["out"] = str(args.out)
    result = {
        "llamacpp_speedup_vs_disk_cache": round(total["disk"] / total["llmsys"], 3),
        "llamacpp_speedup_vs_ram_cache": round(total["ram"] / total["llmsys"], 3),
        "llamacpp_outputs_identical": identical,
        "outputs_identical_all_configs": not any(mismatched.values()),
        "reference": names[0],
        "requests": len(requests),
        "prompt_tokens": sum(len(q.prompt_ids) for q in requests),
        "cache_capacity_bytes": capacity,
        "distinct_chunk_footprint_bytes": footprint_bytes,
        "logits_all": args.logits_all,
        "rounds": args.rounds,
        "configs": summary,
        "machine": "dev-2c: 2 cores, 24 GiB, no GPU",
        "git_sha": git_sha(),
        "config_hash": config_hash(cfg),
    }
    print(
        f"speedup: {result['llamacpp_speedup_vs_disk_cache']}x vs LlamaDiskCache, "
        f"{result['llamacpp_speedup_vs_ram_cache']}x vs LlamaRAMCache; outputs identical: "
        f"{identical}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
