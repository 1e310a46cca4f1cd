"""One timed request to an OpenAI-compatible server: the load generator's HTTP client.

Protocol: :func:`post_completion` POSTs a JSON body on a fresh connection (stdlib
``http.client``, so the client is small and its memory is easy to account for), reads the
answer and fills a record in place: ``status`` (``ok``/``error``), ``http_status``, ``id``,
``tokens``, ``wall_start_s``, ``e2e_s``, and for streams ``ttft_s`` (send -> first SSE chunk
with content, monotonic clock), ``first_chunk_wall_s`` (Unix time of that chunk, to compare
with the server's log), ``itl_mean_s`` and ``itl_max_s``; ``error`` says what failed. It
returns the inter-token gaps so the caller can aggregate them; it never raises for a server
or network failure. Both ``/v1/completions`` (``choices[0].text``) and
``/v1/chat/completions`` (``choices[0].delta.content``) chunks are understood; chunks without
content (a role-only first chunk) do not count as tokens.
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

__all__ = ["post_completion"]


def post_completion(
    host: str,
    port: int,
    path: str,
    body: bytes,
    stream: bool,
    timeout_s: float,
    rec: dict[str, Any],
) -> list[float]:
    """Send ``body`` to ``path`` and fill ``rec`` (see the module doc); return ITL gaps [s]."""
    rec.update(
        status="error",
        http_status=None,
        id=None,
        ttft_s=None,
        first_chunk_wall_s=None,
        tokens=0,
        wall_start_s=time.time(),
    )
    gaps: list[float] = []
    start = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        rec["http_status"] = resp.status
        if resp.status != 200:
            rec["error"] = resp.read(300).decode(errors="replace")
        elif stream:
            _read_stream(resp, rec, start, gaps)
        else:
            obj = json.loads(resp.read())
            rec["id"] = obj.get("id")
            rec["tokens"] = int(obj.get("usage", {}).get("completion_tokens", 0))
            rec["status"] = "ok"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    rec["e2e_s"] = round(time.monotonic() - start, 6)
    if gaps:
        rec["itl_mean_s"] = round(sum(gaps) / len(gaps), 6)
        rec["itl_max_s"] = round(max(gaps), 6)
    return gaps


def _read_stream(resp: Any, rec: dict[str, Any], start: float, gaps: list[float]) -> None:
    last: float | None = None
    while True:
        line = resp.readline()
        if not line:
            rec["error"] = "stream ended without [DONE]"
            return
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            rec["status"] = "ok"
            return
        chunk = json.loads(data)
        rec["id"] = rec["id"] or chunk.get("id")
        choice = (chunk.get("choices") or [{}])[0]
        piece = choice.get("text") or (choice.get("delta") or {}).get("content")
        if not piece:
            continue
        now = time.monotonic()
        if last is None:
            rec["ttft_s"] = round(now - start, 6)
            rec["first_chunk_wall_s"] = time.time()
        else:
            gaps.append(now - last)
        last = now
        rec["tokens"] += 1
