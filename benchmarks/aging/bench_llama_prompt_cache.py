"""What llama-cpp-python's RAM prompt cache really holds, against the bound it is given.

Usage::

    python benchmarks/aging/bench_llama_prompt_cache.py                      # 60 requests, 16 MiB
    python benchmarks/aging/bench_llama_prompt_cache.py --capacity-mib 256 --requests 300

Diagnoses the llama.cpp deployment's RSS growth in the aging campaigns. llama-cpp-python's
server (``--cache true --cache_type ram``) saves a ``LlamaState`` after every completion in
a ``LlamaRAMCache`` bounded at ``--cache_size`` bytes, but the bound counts only
``llama_state_size`` (the KV-cache bytes). Each state also carries ``scores``: a copy of the
first ``n_tokens`` rows (at most ``n_batch``) of the model's ``[n_batch, n_vocab]`` float32
logits buffer - 192 KiB per token for SmolLM2's 49,152-token vocabulary, ~8.5x the KV bytes
- so the cache is bounded, but at about ten times its nominal size.

Two fresh worker processes load the bundled SmolLM2 GGUF exactly as the server does (n_ctx
2048, n_batch 256, 1 thread, mmap on, mlock off) and answer the same seeded prompts (the
campaign's load generator's vocabulary and lengths: lognormal words, median 32, sigma 1;
lognormal output tokens, median 16, sigma 0.5): one with the RAM cache at
``--capacity-mib``, one without (the baseline). After every request each records
``/proc/self/smaps_rollup`` (Anonymous, Rss) and ``/proc/self/status`` (RssAnon,
RssFile); the cached worker also records the cache's entries, its counted size and the
bytes its states really hold (``scores`` + ``llama_state`` + ``input_ids``).

Figures: anonymous-memory growth of each worker, the cached worker's growth above the
baseline at the end, the real-to-counted ratio, the fit of that growth on the states'
real bytes, and the slope over the last third of the requests (near zero once the cache
is full: bounded, not a leak). The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from llmsys.core.provenance import config_hash, git_sha

MIB = 1 << 20


def _memory() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/smaps_rollup") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("Rss", "Anonymous"):
                out[key.lower() + "_bytes"] = int(value.split()[0]) * 1024
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                out[{"RssAnon": "rss_anon_bytes", "RssFile": "rss_file_bytes"}[key]] = (
                    int(value.split()[0]) * 1024
                )
    return out


def worker(cache_mib: int | None, requests: int, seed: int, out: Path) -> None:
    """Serve ``requests`` seeded completions in-process and write one JSON line after each."""
    import llama_cpp

    from llmsys.aging.loadgen import _VOCAB
    from llmsys.core.model import bundled_gguf_path

    llm = llama_cpp.Llama(
        model_path=str(bundled_gguf_path()),
        n_ctx=2048,
        n_batch=256,
        n_threads=1,
        use_mmap=True,
        use_mlock=False,
        verbose=False,
    )
    cache = None
    if cache_mib is not None:
        cache = llama_cpp.LlamaRAMCache(capacity_bytes=cache_mib * MIB)
        llm.set_cache(cache)
    rng = random.Random(seed)
    with out.open("w") as fh:
        fh.write(json.dumps({"i": -1, "scores_shape": list(llm.scores.shape), **_memory()}) + "\n")
        for i in range(requests):
            words = max(1, min(1024, round(rng.lognormvariate(math.log(32), 1.0))))
            max_tokens = max(1, min(64, round(rng.lognormvariate(math.log(16), 0.5))))
            prompt = " ".join(rng.choice(_VOCAB) for _ in range(words))
            for _ in llm.create_completion(prompt, max_tokens=max_tokens, stream=True):
                pass
            rec: dict[str, Any] = {"i": i, "words": words, "n_tokens": llm.n_tokens, **_memory()}
            if cache is not None:
                states = list(cache.cache_state.values())
                rec |= {
                    "entries": len(states),
                    "counted_bytes": cache.cache_size,
                    "scores_bytes": sum(s.scores.nbytes for s in states),
                    "state_bytes": sum(len(s.llama_state) for s in states),
                    "input_ids_bytes": sum(s.input_ids.nbytes for s in states),
                }
            fh.write(json.dumps(rec) + "\n")
            fh.flush()


def _run_worker(cache_mib: int | None, args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    cmd = [sys.executable, __file__, "--worker", "--requests", str(args.requests)]
    cmd += ["--seed", str(args.seed), "--out-dir", str(args.out_dir)]
    cmd += ["--capacity-mib", str(cache_mib)] if cache_mib is not None else ["--no-cache"]
    subprocess.run(cmd, check=True)
    return [json.loads(line) for line in out.read_text().splitlines()]


def _plot(
    on: list[dict[str, Any]], off: list[dict[str, Any]], capacity_mib: int, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for rows, label in ((on, f"RAM cache, bound {capacity_mib} MiB"), (off, "no cache")):
        x = [r["i"] + 1 for r in rows]
        ax.plot(x, [r["anonymous_bytes"] / MIB for r in rows], label=f"{label}: Anonymous")
    base = on[0]["anonymous_bytes"] / MIB
    x = [r["i"] + 1 for r in on[1:]]
    real = [
        base + (r["scores_bytes"] + r["state_bytes"] + r["input_ids_bytes"]) / MIB for r in on[1:]
    ]
    counted = [base + r["counted_bytes"] / MIB for r in on[1:]]
    ax.plot(x, real, "--", label="start + states' real bytes (scores + KV state)")
    ax.plot(x, counted, ":", label="start + bytes the bound counts (KV state)")
    ax.set_xlabel("requests (seeded prompts, the campaign's length distribution)")
    ax.set_ylabel("MiB")
    ax.set_title("llama-cpp-python LlamaRAMCache: bounded on KV bytes, holds ~10x more")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=60, help="completions per worker")
    parser.add_argument("--capacity-mib", type=int, default=16, help="RAM cache bound, MiB")
    parser.add_argument("--seed", type=int, default=0, help="prompt seed (same for both workers)")
    parser.add_argument("--out-dir", type=Path, default=Path("results/aging/llama_prompt_cache"))
    parser.add_argument("--plot", type=Path, default=None, help="write the PNG here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-cache", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.requests < 6 or args.capacity_mib < 1:
        parser.error("--requests must be >= 6 and --capacity-mib >= 1")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    on_path, off_path = args.out_dir / "cache_on.jsonl", args.out_dir / "cache_off.jsonl"
    if args.worker:
        cache = None if args.no_cache else args.capacity_mib
        worker(cache, args.requests, args.seed, off_path if args.no_cache else on_path)
        return 0

    on = _run_worker(args.capacity_mib, args, on_path)
    off = _run_worker(None, args, off_path)
    anon_on = np.array([r["anonymous_bytes"] for r in on[1:]], dtype=float)
    anon_off = np.array([r["anonymous_bytes"] for r in off[1:]], dtype=float)
    real = np.array([r["scores_bytes"] + r["state_bytes"] + r["input_ids_bytes"] for r in on[1:]])
    counted = np.array([r["counted_bytes"] for r in on[1:]], dtype=float)
    req = np.arange(1, len(anon_on) + 1, dtype=float)
    third = len(req) // 3
    last_slope_on = float(np.polyfit(req[-third:], anon_on[-third:], 1)[0])
    first_slope_on = float(np.polyfit(req[:third], anon_on[:third], 1)[0])
    last_slope_off = float(np.polyfit(req[-third:], anon_off[-third:], 1)[0])
    fit = float(np.polyfit(real, anon_on, 1)[0])
    last = on[-1]
    figures = {
        "requests": args.requests,
        "capacity_mib": args.capacity_mib,
        "entries_end": last["entries"],
        "counted_mib_end": last["counted_bytes"] / MIB,
        "real_mib_end": float(real[-1]) / MIB,
        "scores_mib_end": last["scores_bytes"] / MIB,
        "real_to_counted_ratio": float(real[-1] / counted[-1]),
        "anon_growth_cache_mib": float(anon_on[-1] - on[0]["anonymous_bytes"]) / MIB,
        "anon_growth_nocache_mib": float(anon_off[-1] - off[0]["anonymous_bytes"]) / MIB,
        "anon_above_nocache_mib_end": float(anon_on[-1] - anon_off[-1]) / MIB,
        "anon_per_real_byte_fit": fit,
        "cache_first_third_mib_per_req": first_slope_on / MIB,
        "cache_last_third_mib_per_req": last_slope_on / MIB,
        "nocache_last_third_mib_per_req": last_slope_off / MIB,
        "mean_n_tokens": float(np.mean([r["n_tokens"] for r in on[1:]])),
    }
    print(f"{'':34}{'cache on':>12}{'cache off':>12}")
    print(f"{'anonymous growth, MiB':34}{figures['anon_growth_cache_mib']:12.1f}"
          f"{figures['anon_growth_nocache_mib']:12.1f}")  # fmt: skip
    print(f"{'slope, last third, MiB/request':34}{figures['cache_last_third_mib_per_req']:12.2f}"
          f"{figures['nocache_last_third_mib_per_req']:12.2f}")  # fmt: skip
    print(f"cache at the end: {last['entries']} entries, "
          f"counted {figures['counted_mib_end']:.1f} MiB "
          f"(bound {args.capacity_mib}), real {figures['real_mib_end']:.1f} MiB "
          f"(scores {figures['scores_mib_end']:.1f}); real/counted "
          f"{figures['real_to_counted_ratio']:.1f}x; anon ~ {fit:.2f} x real bytes")  # fmt: skip
    if args.plot is not None:
        _plot(on, off, args.capacity_mib, args.plot)
        print(f"plot: {args.plot}")
    cfg = {
        k: v for k, v in vars(args).items() if k not in ("plot", "out_dir", "worker", "no_cache")
    }
    print(json.dumps({**figures, "git_sha": git_sha(), "config_hash": config_hash(cfg)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
