"""Memory of the zero-rate control server per request: is the serving layer itself flat?

Usage::

    python benchmarks/aging/bench_server_memory.py                      # 20,000 requests
    python benchmarks/aging/bench_server_memory.py --requests 5000 --every 250

The control injector (``InjectorKind.CONTROL``, no delays) runs as a real child process
(:func:`llmsys.aging.injectors.serve_injector`), with tracemalloc on so that ``/debug/engine``
reports its traced Python heap. One client sends ``--requests`` sequential requests
(alternating streamed chat and completions, 16 tokens, ~32-word prompts); every ``--every``
requests it reads the server's ``/proc/PID/smaps_rollup`` (Rss, Anonymous) and the traced
heap. The first ``--warmup`` requests (lazy imports, pools) are excluded from the slopes.

Figures: growth of RSS, anonymous memory and traced heap from the end of the warm-up to the
end, and least-squares slopes per 1,000 requests over that span; bytes per request. A
server that keeps per-request records, even in a bounded log, shows up as growth here until
the log fills (the old 1,024-entry deque of dicts: +355 KB traced, +1.3 MiB RSS). The last
stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import sys
from typing import Any

import numpy as np

from llmsys.core.provenance import config_hash, git_sha


def _serve(port_queue: Any) -> None:
    from llmsys.aging.injectors import InjectorConfig, InjectorEngine, InjectorKind
    from llmsys.aging.openai_api import OpenAIServer

    cfg = InjectorConfig(
        kind=InjectorKind.CONTROL,
        first_token_delay_s=0.0,
        token_delay_s=0.0,
        trace_python_heap=True,
    )
    server = OpenAIServer(InjectorEngine(cfg), "127.0.0.1", 0)
    port_queue.put(server.port)
    server.serve_forever()


def _smaps(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("Rss", "Anonymous"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _call(port: int, method: str, path: str, body: bytes | None = None) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path} answered {resp.status}")
        return data
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="requests to send")
    parser.add_argument("--every", type=int, default=500, help="sample every N requests")
    parser.add_argument("--warmup", type=int, default=200, help="requests before the baseline")
    args = parser.parse_args(argv)
    if args.every < 1 or args.warmup < 0 or args.requests < args.warmup + 4 * args.every:
        parser.error("need --every >= 1 and --requests >= --warmup + 4 x --every")
    ctx = mp.get_context("spawn")
    port_queue = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(port_queue,), daemon=True)
    proc.start()
    try:
        port = int(port_queue.get(timeout=60))
        words = " ".join(f"word{k}" for k in range(32))
        chat = json.dumps(
            {"messages": [{"role": "user", "content": words}], "max_tokens": 16, "stream": True}
        ).encode()
        plain = json.dumps({"prompt": words, "max_tokens": 16, "stream": False}).encode()
        samples: list[tuple[int, int, int, int]] = []  # requests, rss, anon, traced
        for i in range(args.requests + 1):
            if i >= args.warmup and (i - args.warmup) % args.every == 0:
                traced = json.loads(_call(port, "GET", "/debug/engine"))["traced_current_bytes"]
                mem = _smaps(proc.pid or 0)
                samples.append((i, mem["Rss"], mem["Anonymous"], int(traced)))
            if i < args.requests:
                path, body = ("/v1/chat/completions", chat) if i % 2 else ("/v1/completions", plain)
                _call(port, "POST", path, body)
    finally:
        proc.terminate()
        proc.join(10)
    arr = np.array(samples, dtype=float)
    n = arr[:, 0]
    figures: dict[str, Any] = {"requests": args.requests, "warmup_requests": args.warmup}
    print(f"{'':14}{'start MiB':>11}{'end MiB':>11}{'growth KiB':>12}{'slope KiB/1k req':>18}")
    for col, name in ((1, "rss"), (2, "anon"), (3, "traced")):
        growth = arr[-1, col] - arr[0, col]
        slope = float(np.polyfit(n, arr[:, col], 1)[0]) * 1000
        figures[f"{name}_growth_bytes"] = int(growth)
        figures[f"{name}_slope_bytes_per_1k_req"] = slope
        figures[f"{name}_bytes_per_req"] = growth / (n[-1] - n[0])
        print(f"{name:14}{arr[0, col] / 2**20:11.2f}{arr[-1, col] / 2**20:11.2f}"
              f"{growth / 1024:12.1f}{slope / 1024:18.2f}")  # fmt: skip
    cfg = vars(args)
    print(json.dumps({**figures, "git_sha": git_sha(), "config_hash": config_hash(cfg)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
