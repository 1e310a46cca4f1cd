"""OpenAI-compatible HTTP serving layer shared by llmsys's own server and the injectors.

Protocol: a :class:`TextEngine` turns a prompt into ``(prompt_tokens, pieces)`` where
``pieces`` yields one text piece per generated token; :class:`OpenAIServer` serves it over
HTTP/1.1 (one request per connection, ``Connection: close``) on a thread per request:

- ``POST /v1/completions`` ``{"prompt": str, "max_tokens": int, "stream": bool}``
- ``POST /v1/chat/completions`` ``{"messages": [{"role", "content"}], "max_tokens", "stream"}``
  Streaming answers are Server-Sent Events, exactly one ``data:`` chunk per generated token,
  then a chunk with ``finish_reason`` and ``data: [DONE]``.
- ``GET /health`` (200 once the engine is loaded), ``GET /v1/models``.
- ``GET /metrics``: Prometheus text from this server's own registry -
  ``llmsys_requests_total``, ``llmsys_prompt_tokens_total``,
  ``llmsys_generated_tokens_total``, ``llmsys_request_errors_total``,
  ``llmsys_requests_running`` and whatever gauges the engine adds.
- ``GET /debug/requests``: wall-clock timings of the last 1,024 requests (``received_s``,
  ``first_chunk_s``, ``end_s``, ``tokens``), keyed by the response ``id`` - the ground truth
  a client's time-to-first-token is checked against. The log is a
  :class:`~llmsys.aging.timing_log.TimingLog`, allocated once when the server starts.
- ``GET /debug/engine``: the engine's :meth:`TextEngine.debug_state` (e.g. tracemalloc figures).

Every buffer here is bounded and the timing log's is preallocated, so the server itself
does not age: a zero-rate engine's memory is flat from the first request (the test
``tests/aging/test_openai_api_memory.py`` pins the net Python-heap growth per request).
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from llmsys.aging.timing_log import RequestTiming, TimingLog, response_id

__all__ = ["MAX_TOKENS_LIMIT", "OpenAIServer", "TextEngine"]

_LOG = logging.getLogger(__name__)
MAX_TOKENS_LIMIT = 4096
"""Largest ``max_tokens`` a request may ask for."""
_TIMING_LOG_LEN = 1024


class TextEngine(Protocol):
    """What :class:`OpenAIServer` needs from a model (real or injector)."""

    model_name: str

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """Render chat ``messages`` into one prompt string."""

    def generate(self, prompt: str, max_tokens: int) -> tuple[int, Iterator[str]]:
        """Return the prompt's token count and an iterator of one text piece per new token."""

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Add engine-specific metrics (e.g. injected bytes) to the server's registry."""

    def debug_state(self) -> dict[str, Any]:
        """Return a JSON-serialisable snapshot served at ``/debug/engine``."""


class _BadRequest(Exception):
    pass


class OpenAIServer:
    """A threaded HTTP server exposing one :class:`TextEngine` through the OpenAI API.

    Args:
        engine: the model to serve.
        host: interface to bind (``127.0.0.1`` by default: nothing here is authenticated).
        port: TCP port; 0 picks a free one (read it back from :attr:`port`).

    Raises:
        OSError: the port cannot be bound.
    """

    def __init__(self, engine: TextEngine, host: str = "127.0.0.1", port: int = 0) -> None:
        self.engine = engine
        self.registry = CollectorRegistry()
        self.requests = Counter("llmsys_requests", "Requests answered", registry=self.registry)
        self.prompt_tokens = Counter(
            "llmsys_prompt_tokens", "Prompt tokens received", registry=self.registry
        )
        self.generated_tokens = Counter(
            "llmsys_generated_tokens", "Tokens generated", registry=self.registry
        )
        self.errors = Counter(
            "llmsys_request_errors", "Requests that failed", registry=self.registry
        )
        self.running = Gauge(
            "llmsys_requests_running", "Requests in progress", registry=self.registry
        )
        engine.register_metrics(self.registry)
        self.timing_log = TimingLog(_TIMING_LOG_LEN)
        self._ids = itertools.count(1)
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8000``."""
        host = self._httpd.server_address[0]
        return f"http://{host if isinstance(host, str) else host.decode()}:{self.port}"

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` is called from another thread."""
        self._httpd.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()

    def next_number(self) -> int:
        """Return a fresh response-id number (the ``17`` of ``cmpl-17``)."""
        return next(self._ids)

    def record_timing(self, timing: RequestTiming) -> None:
        """Write one request's timings into the fixed-size log."""
        self.timing_log.record(timing)

    def timings(self) -> list[dict[str, Any]]:
        """Return a copy of the timing log, oldest first."""
        return self.timing_log.entries()


def _make_handler(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        owner = server

    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: OpenAIServer

    def setup(self) -> None:
        super().setup()
        # Without TCP_NODELAY, Nagle's algorithm holds small SSE chunks back by up to 40 ms
        # and the client-side time-to-first-token would not match the server's.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        _LOG.debug("%s " + format, self.address_string(), *args)

    # ----------------------------------------------------------------- plumbing
    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _send_json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._send_json(status, {"error": {"message": message, "type": "invalid_request_error"}})

    def do_GET(self) -> None:
        owner = self.owner
        if self.path == "/health":
            self._send_json(200, {"status": "ok"})
        elif self.path == "/metrics":
            self._send(200, generate_latest(owner.registry), CONTENT_TYPE_LATEST)
        elif self.path == "/v1/models":
            model = {"id": owner.engine.model_name, "object": "model", "owned_by": "llmsys"}
            self._send_json(200, {"object": "list", "data": [model]})
        elif self.path == "/debug/requests":
            self._send_json(200, {"requests": owner.timings()})
        elif self.path == "/debug/engine":
            self._send_json(200, owner.engine.debug_state())
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        chat = self.path == "/v1/chat/completions"
        if not chat and self.path != "/v1/completions":
            self._error(404, f"no route {self.path}")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            prompt, max_tokens, stream = self._parse(body, chat)
        except (ValueError, _BadRequest) as exc:
            self.owner.errors.inc()
            self._error(400, str(exc))
            return
        self._complete(prompt, max_tokens, stream, chat)

    def _parse(self, body: Any, chat: bool) -> tuple[str, int, bool]:
        if not isinstance(body, dict):
            raise _BadRequest("the request body must be a JSON object")
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
            ):
                raise _BadRequest("'messages' must be a list of {role, content} objects")
            prompt = self.owner.engine.chat_prompt(messages)
        else:
            raw = body.get("prompt")
            if not isinstance(raw, str):
                raise _BadRequest("'prompt' must be a string")
            prompt = raw
        max_tokens = body.get("max_tokens", 16)
        if not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
            raise _BadRequest(f"'max_tokens' must be an integer in [1, {MAX_TOKENS_LIMIT}]")
        return prompt, max_tokens, bool(body.get("stream", False))

    # ----------------------------------------------------------------- generation
    def _complete(self, prompt: str, max_tokens: int, stream: bool, chat: bool) -> None:
        owner = self.owner
        number = owner.next_number()
        rid = response_id(chat, number)
        received_s = time.time()
        first_chunk_s: list[float] = []  # set by _stream when its first chunk leaves
        owner.running.inc()
        tokens = 0
        pieces: Iterator[str] | None = None
        try:
            prompt_tokens, pieces = owner.engine.generate(prompt, max_tokens)
            owner.prompt_tokens.inc(prompt_tokens)
            if stream:
                tokens = self._stream(rid, pieces, chat, first_chunk_s, max_tokens)
            else:
                text = []
                for piece in pieces:
                    text.append(piece)
                    tokens += 1
                    owner.generated_tokens.inc()
                self._send_json(
                    200,
                    _full_response(
                        rid, owner, "".join(text), chat, tokens, prompt_tokens, max_tokens
                    ),
                )
            owner.requests.inc()
        except (BrokenPipeError, ConnectionResetError) as exc:
            owner.errors.inc()
            _LOG.info("client of %s went away: %s", rid, exc)
        except Exception as exc:  # an engine bug must answer 500, not kill the connection
            owner.errors.inc()
            _LOG.exception("request %s failed", rid)
            if not first_chunk_s and not stream:
                self._send_json(500, {"error": {"message": str(exc), "type": "server_error"}})
        finally:
            # Closing the generator at once releases what it holds (the model lock) even
            # when the client went away mid-stream.
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
            owner.running.dec()
            owner.record_timing(
                RequestTiming(
                    number=number,
                    chat=chat,
                    received_s=received_s,
                    first_chunk_s=first_chunk_s[0] if first_chunk_s else None,
                    end_s=time.time(),
                    tokens=tokens,
                )
            )

    def _stream(
        self,
        rid: str,
        pieces: Iterator[str],
        chat: bool,
        first_chunk_s: list[float],
        max_tokens: int,
    ) -> int:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        owner = self.owner
        created = int(time.time())
        tokens = 0
        for piece in pieces:
            payload = _chunk(rid, owner.engine.model_name, created, piece, chat, None, tokens == 0)
            self.wfile.write(b"data: " + payload + b"\n\n")
            if tokens == 0:
                first_chunk_s.append(time.time())
            tokens += 1
            owner.generated_tokens.inc()
        reason = "length" if tokens >= max_tokens else "stop"
        final = _chunk(rid, owner.engine.model_name, created, "", chat, reason, False)
        self.wfile.write(b"data: " + final + b"\n\ndata: [DONE]\n\n")
        return tokens


def _chunk(
    rid: str, model: str, created: int, piece: str, chat: bool, reason: str | None, first: bool
) -> bytes:
    if chat:
        delta: dict[str, str] = {"content": piece} if piece else {}
        if first:
            delta["role"] = "assistant"
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": reason}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": piece, "finish_reason": reason}
        obj = "text_completion"
    return json.dumps(
        {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}
    ).encode()


def _full_response(
    rid: str,
    owner: OpenAIServer,
    text: str,
    chat: bool,
    tokens: int,
    prompt_tokens: int,
    max_tokens: int,
) -> dict[str, Any]:
    reason = "length" if tokens >= max_tokens else "stop"
    if chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": reason,
        }
    else:
        choice = {"index": 0, "text": text, "finish_reason": reason}
    return {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": owner.engine.model_name,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": tokens,
            "total_tokens": prompt_tokens + tokens,
        },
    }
