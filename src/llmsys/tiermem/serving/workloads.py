"""Request workloads with real prefix reuse, and a reader for Mooncake-format traces.

A :class:`Request` is token ids in, a number of tokens out. Three sources:

- :func:`chat_workload` - multi-turn chat sessions over one shared system prompt. Sessions
  are served round-robin (turn 1 of every session, then turn 2 of every session, ...), so a
  session's history comes back only after every other session has been touched: its reuse
  distance is the whole working set, which is what defeats a DRAM cache smaller than the
  footprint. Assistant turns in the history are fixed text, not the model's live output,
  so every configuration sees exactly the same requests.
- :func:`docs_workload` - many questions over a few long shared documents, questions
  interleaved across documents.
- :func:`read_mooncake_trace` - a Mooncake FAST'25 trace: each 512-token ``hash_id`` becomes
  ``tokens_per_hash`` deterministic token ids (equal hashes, equal tokens); input and output
  lengths scale by the same factor (at least one output token).

Generators draw text from the Python standard library's own source files (real tokens,
present on every machine with Python) and are sized by a target KV footprint: they stop
once the distinct full blocks of all prompts reach ``target_footprint_bytes``.
"""

from __future__ import annotations

import json
import math
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmsys.core.errors import InputError
from llmsys.tiermem.errors import TierConfigError

__all__ = [
    "Request",
    "chat_workload",
    "distinct_blocks",
    "docs_workload",
    "no_reuse_workload",
    "read_mooncake_trace",
]

MOONCAKE_BLOCK_TOKENS = 512
"""Tokens behind one ``hash_id`` in a Mooncake trace."""

_VOCAB_LOW, _VOCAB_HIGH = 200, 49_000  # ordinary tokens of SmolLM2's 49,152-entry vocabulary


@dataclass(frozen=True, slots=True)
class Request:
    """One inference request."""

    request_id: str
    """Unique id within a workload."""
    prompt_ids: tuple[int, ...]
    """Prompt token ids (non-empty)."""
    max_new_tokens: int
    """Tokens to generate (>= 1); greedy decoding stops there or at end-of-sequence."""

    def __post_init__(self) -> None:
        """Raises: InputError: empty prompt or ``max_new_tokens`` < 1."""
        if not self.prompt_ids:
            raise InputError(f"request {self.request_id}: empty prompt")
        if self.max_new_tokens < 1:
            raise InputError(f"request {self.request_id}: max_new_tokens must be >= 1")


Tokenize = Callable[[str], list[int]]


def distinct_blocks(requests: Sequence[Request], block_tokens: int) -> int:
    """Return how many distinct full prefix blocks the prompts of ``requests`` contain."""
    seen: set[tuple[int, ...]] = set()
    for req in requests:
        for end in range(block_tokens, len(req.prompt_ids) + 1, block_tokens):
            seen.add(req.prompt_ids[:end])
    return len(seen)


def _corpus_texts(min_chars: int) -> Iterator[str]:
    """Yield real text: the standard library's Python sources, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if len(text) >= min_chars:
            yield text


class _TokenSource:
    """Hands out consecutive, non-overlapping slices of real tokenized text."""

    def __init__(self, tokenize: Tokenize) -> None:
        self._tokenize = tokenize
        self._texts = _corpus_texts(2_000)
        self._buffer: list[int] = []

    def take(self, n_tokens: int) -> tuple[int, ...]:
        while len(self._buffer) < n_tokens:
            text = next(self._texts, None)
            if text is None:
                raise InputError("ran out of corpus text for the workload generator")
            self._buffer.extend(self._tokenize(text))
        out, self._buffer = self._buffer[:n_tokens], self._buffer[n_tokens:]
        return tuple(out)


def _check_sizes(block_tokens: int, bytes_per_token: int, target_footprint_bytes: int) -> None:
    if block_tokens < 1 or bytes_per_token < 1:
        raise TierConfigError("block_tokens and bytes_per_token must be >= 1")
    if target_footprint_bytes < block_tokens * bytes_per_token:
        raise TierConfigError("target_footprint_bytes is smaller than one block")


def chat_workload(
    tokenize: Tokenize,
    *,
    target_footprint_bytes: int,
    bytes_per_token: int,
    block_tokens: int,
    sessions: int = 12,
    system_tokens: int = 128,
    user_tokens: int = 64,
    assistant_tokens: int = 64,
    max_new_tokens: int = 8,
) -> list[Request]:
    """Multi-turn chat over a shared system prompt, sessions served round-robin.

    Turns are added until the distinct full blocks reach ``target_footprint_bytes``.
    """
    _check_sizes(block_tokens, bytes_per_token, target_footprint_bytes)
    if sessions < 1:
        raise TierConfigError("sessions must be >= 1")
    source = _TokenSource(tokenize)
    system = source.take(system_tokens)
    histories = [system for _ in range(sessions)]
    block_bytes = block_tokens * bytes_per_token
    requests: list[Request] = []
    seen: set[tuple[int, ...]] = set()
    turn = 0
    while len(seen) * block_bytes < target_footprint_bytes:
        for s in range(sessions):
            prompt = histories[s] + source.take(user_tokens)
            requests.append(Request(f"chat-s{s}-t{turn}", prompt, max_new_tokens))
            for end in range(block_tokens, len(prompt) + 1, block_tokens):
                seen.add(prompt[:end])
            histories[s] = prompt + source.take(assistant_tokens)
        turn += 1
    return requests


def docs_workload(
    tokenize: Tokenize,
    *,
    target_footprint_bytes: int,
    bytes_per_token: int,
    block_tokens: int,
    documents: int = 4,
    questions_per_document: int = 6,
    question_tokens: int = 24,
    max_new_tokens: int = 8,
) -> list[Request]:
    """Questions over a few long shared documents, interleaved across documents.

    Each document is long enough that the documents together reach the target footprint.
    """
    _check_sizes(block_tokens, bytes_per_token, target_footprint_bytes)
    if documents < 1 or questions_per_document < 1:
        raise TierConfigError("documents and questions_per_document must be >= 1")
    source = _TokenSource(tokenize)
    doc_tokens = max(block_tokens, target_footprint_bytes // (bytes_per_token * documents))
    doc_tokens = math.ceil(doc_tokens / block_tokens) * block_tokens
    docs = [source.take(doc_tokens) for _ in range(documents)]
    return [
        Request(f"docs-d{d}-q{q}", docs[d] + source.take(question_tokens), max_new_tokens)
        for q in range(questions_per_document)
        for d in range(documents)
    ]


def no_reuse_workload(
    tokenize: Tokenize, *, requests: int, prompt_tokens: int, max_new_tokens: int = 8
) -> list[Request]:
    """Requests that share nothing: the miss path, for measuring a cache's overhead."""
    if requests < 1 or prompt_tokens < 1:
        raise TierConfigError("requests and prompt_tokens must be >= 1")
    source = _TokenSource(tokenize)
    return [
        Request(f"miss-{i}", source.take(prompt_tokens), max_new_tokens) for i in range(requests)
    ]


def _hash_tokens(hash_id: int, n_tokens: int) -> tuple[int, ...]:
    rng = np.random.default_rng(np.uint64(hash_id) ^ np.uint64(0x9E3779B97F4A7C15))
    return tuple(int(t) for t in rng.integers(_VOCAB_LOW, _VOCAB_HIGH, n_tokens))


def read_mooncake_trace(
    path: Path,
    *,
    tokens_per_hash: int = 8,
    requests: int | None = None,
    skip: int = 0,
) -> list[Request]:
    """Read a Mooncake-format JSONL trace into requests.

    Args:
        path: the trace (one JSON object per line: ``timestamp``, ``input_length``,
            ``output_length``, ``hash_ids``).
        tokens_per_hash: tokens each 512-token hash block becomes (>= 1).
        requests: how many requests to keep after ``skip`` (None: all).
        skip: how many leading requests to drop.

    Raises:
        InputError: unreadable file or a malformed line (the message names file and line).
        TierConfigError: ``tokens_per_hash`` < 1, ``requests`` < 1 or ``skip`` < 0.
    """
    if tokens_per_hash < 1:
        raise TierConfigError("tokens_per_hash must be >= 1")
    if requests is not None and requests < 1:
        raise TierConfigError("requests must be >= 1")
    if skip < 0:
        raise TierConfigError("skip must be >= 0")
    scale = tokens_per_hash / MOONCAKE_BLOCK_TOKENS
    out: list[Request] = []
    cache: dict[int, tuple[int, ...]] = {}
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read trace: {exc}") from exc
    with handle:
        for lineno, line in enumerate(handle, start=1):
            if lineno <= skip or not line.strip():
                continue
            if requests is not None and len(out) >= requests:
                break
            try:
                rec = json.loads(line)
                hash_ids = [int(h) for h in rec["hash_ids"]]
                input_length = int(rec["input_length"])
                output_length = int(rec["output_length"])
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"{path}:{lineno}: malformed trace record: {exc}") from exc
            if not hash_ids or input_length < 1 or output_length < 0:
                raise InputError(f"{path}:{lineno}: empty hash_ids or invalid lengths")
            tokens: list[int] = []
            for h in hash_ids:
                block = cache.get(h)
                if block is None:
                    block = cache[h] = _hash_tokens(h, tokens_per_hash)
                tokens.extend(block)
            n_tokens = min(len(tokens), max(1, math.ceil(input_length * scale)))
            n_out = max(1, round(output_length * scale))
            out.append(Request(f"trace-{lineno - 1}", tuple(tokens[:n_tokens]), n_out))
    return out
