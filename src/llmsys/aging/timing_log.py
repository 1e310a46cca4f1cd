"""A per-request timing log whose memory is allocated once, when it is created.

Protocol: :class:`TimingLog` ``(capacity)`` preallocates one typed array per field
(``array.array``: response-id number, chat flag, ``received_s``, ``first_chunk_s``,
``end_s``, ``tokens``) for ``capacity`` records. :meth:`TimingLog.record` writes one
request's :class:`RequestTiming` into the oldest slot of that ring, in place, under a lock;
:meth:`TimingLog.entries` returns the last ``min(recorded_total, capacity)`` records, oldest
first, as the plain dicts ``/debug/requests`` serves. Nothing is evicted or freed: a slot is
overwritten.

Why a ring of typed arrays and not a ``deque(maxlen=...)`` of dicts: the deque is bounded,
but every entry is a new dict, id string and three floats (~350 B of Python heap), so a
server's memory grows by that much per request until the deque fills (1,024 requests: 0.36
MiB traced, ~1.3 MiB of RSS measured with the allocator's overhead). A zero-rate control
deployment then shows a real, significant linear trend in any campaign shorter than its
fill - exactly the false alarm a control is there to rule out. Recording here allocates
nothing that outlives the call, so the log's footprint is the same after the first request
as after the millionth (``capacity`` x 41 bytes).

Errors: :class:`~llmsys.aging.probe_errors.ProbeConfigError` for a capacity < 1 or a
negative field (raised by ``__init__`` / ``RequestTiming.__post_init__``).
"""

from __future__ import annotations

import math
import threading
from array import array
from dataclasses import dataclass
from typing import Any

from llmsys.aging.probe_errors import ProbeConfigError

__all__ = ["RequestTiming", "TimingLog", "response_id"]

_CHAT_PREFIX = "chatcmpl"
_COMPLETION_PREFIX = "cmpl"


def response_id(chat: bool, number: int) -> str:
    """The OpenAI-style response id: ``chatcmpl-<number>`` for chat, else ``cmpl-<number>``."""
    return f"{_CHAT_PREFIX if chat else _COMPLETION_PREFIX}-{number}"


@dataclass(frozen=True, slots=True)
class RequestTiming:
    """Server-side wall-clock timings of one answered (or failed) request."""

    number: int
    """Sequence number of the response id (``cmpl-<number>`` / ``chatcmpl-<number>``); >= 0."""
    chat: bool
    """True for ``/v1/chat/completions`` (id prefix ``chatcmpl``), else ``cmpl``."""
    received_s: float
    """Unix time the request was parsed, seconds."""
    first_chunk_s: float | None
    """Unix time the first streamed chunk was written; None when nothing was streamed."""
    end_s: float
    """Unix time the answer was finished (or abandoned), seconds."""
    tokens: int
    """Tokens generated; >= 0."""

    def __post_init__(self) -> None:
        if self.number < 0 or self.tokens < 0:
            raise ProbeConfigError("number and tokens must be >= 0")

    @property
    def id(self) -> str:
        """The response id, e.g. ``chatcmpl-17``."""
        return response_id(self.chat, self.number)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``/debug/requests`` entries."""
        return {
            "id": self.id,
            "received_s": self.received_s,
            "first_chunk_s": self.first_chunk_s,
            "end_s": self.end_s,
            "tokens": self.tokens,
        }


class TimingLog:
    """Fixed-size ring of :class:`RequestTiming` records in preallocated typed arrays.

    Args:
        capacity: records kept (the most recent ones); >= 1.

    Raises:
        ProbeConfigError: ``capacity`` < 1.
    """

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 1:
            raise ProbeConfigError(f"capacity must be >= 1, not {capacity}")
        self.capacity = capacity
        zeros = bytes(8 * capacity)
        self._number = array("q", zeros)
        self._chat = bytearray(capacity)
        self._received_s = array("d", zeros)
        self._first_chunk_s = array("d", zeros)
        self._end_s = array("d", zeros)
        self._tokens = array("q", zeros)
        self._recorded = 0
        self._lock = threading.Lock()

    @property
    def recorded_total(self) -> int:
        """Records written since creation (the ring holds the last ``capacity`` of them)."""
        with self._lock:
            return self._recorded

    def record(self, timing: RequestTiming) -> None:
        """Overwrite the oldest slot with ``timing``."""
        first = math.nan if timing.first_chunk_s is None else timing.first_chunk_s
        with self._lock:
            slot = self._recorded % self.capacity
            self._number[slot] = timing.number
            self._chat[slot] = 1 if timing.chat else 0
            self._received_s[slot] = timing.received_s
            self._first_chunk_s[slot] = first
            self._end_s[slot] = timing.end_s
            self._tokens[slot] = timing.tokens
            self._recorded += 1

    def records(self) -> list[RequestTiming]:
        """The kept records, oldest first."""
        with self._lock:
            n = min(self._recorded, self.capacity)
            start = self._recorded - n
            out = []
            for k in range(start, self._recorded):
                slot = k % self.capacity
                first = self._first_chunk_s[slot]
                out.append(
                    RequestTiming(
                        number=self._number[slot],
                        chat=bool(self._chat[slot]),
                        received_s=self._received_s[slot],
                        first_chunk_s=None if math.isnan(first) else first,
                        end_s=self._end_s[slot],
                        tokens=self._tokens[slot],
                    )
                )
        return out

    def entries(self) -> list[dict[str, Any]]:
        """The kept records as ``/debug/requests`` dicts, oldest first."""
        return [r.to_dict() for r in self.records()]
