"""Workload generators and the Mooncake trace reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmsys.core.errors import InputError
from llmsys.tiermem.serving.workloads import (
    chat_workload,
    distinct_blocks,
    docs_workload,
    read_mooncake_trace,
)

SHARED_TRACE = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "mooncake_synthetic_trace.jsonl"
)


def fake_tokenize(text: str) -> list[int]:
    return [ord(c) % 5000 + 200 for c in text]


def _write(tmp_path: Path, records: list[dict[str, object]]) -> Path:
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_equal_hashes_give_equal_tokens_and_outputs_scale(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        [
            {"timestamp": 0, "input_length": 1024, "output_length": 512, "hash_ids": [1, 2]},
            {"timestamp": 1, "input_length": 1500, "output_length": 10, "hash_ids": [1, 2, 3]},
            {"timestamp": 2, "input_length": 600, "output_length": 5, "hash_ids": [7, 2]},
        ],
    )
    reqs = read_mooncake_trace(path, tokens_per_hash=8)
    # request 0: two hash blocks -> 16 tokens; output 512 * 8 / 512 = 8
    assert len(reqs[0].prompt_ids) == 16 and reqs[0].max_new_tokens == 8
    # request 1 shares hashes 1, 2: its first 16 tokens equal request 0's
    assert reqs[1].prompt_ids[:16] == reqs[0].prompt_ids
    # 1500 * 8 / 512 = 23.4 -> 24 tokens; output 10 * 8 / 512 rounds to 0 -> at least 1
    assert len(reqs[1].prompt_ids) == 24 and reqs[1].max_new_tokens == 1
    # 600 * 8 / 512 = 9.4 -> 10 tokens; hash 2 in another request gives the same tokens
    assert len(reqs[2].prompt_ids) == 10
    assert reqs[2].prompt_ids[8:10] == reqs[0].prompt_ids[8:10]
    assert reqs[2].prompt_ids[:8] != reqs[0].prompt_ids[:8]


def test_window_selection(tmp_path: Path) -> None:
    records = [
        {"timestamp": i, "input_length": 512, "output_length": 1, "hash_ids": [i]}
        for i in range(10)
    ]
    reqs = read_mooncake_trace(_write(tmp_path, records), requests=3, skip=4)
    assert [r.request_id for r in reqs] == ["trace-4", "trace-5", "trace-6"]


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1]}\n'
        '{"timestamp": 1, "input_length": "x"}\n'
    )
    with pytest.raises(InputError, match=r"bad.jsonl:2"):
        read_mooncake_trace(path)


def test_shared_trace_is_readable() -> None:
    if not SHARED_TRACE.exists():
        pytest.skip("shared trace not present")
    reqs = read_mooncake_trace(SHARED_TRACE, requests=50)
    assert len(reqs) == 50
    assert all(r.max_new_tokens >= 1 for r in reqs)


def test_chat_workload_reaches_footprint_with_reuse() -> None:
    bytes_per_token, block_tokens = 100, 16
    target = 200 * block_tokens * bytes_per_token
    reqs = chat_workload(
        fake_tokenize,
        target_footprint_bytes=target,
        bytes_per_token=bytes_per_token,
        block_tokens=block_tokens,
        sessions=4,
    )
    assert distinct_blocks(reqs, block_tokens) * block_tokens * bytes_per_token >= target
    # turn 2 of session 0 extends turn 1's prompt (the session's history is its prefix)
    t0 = next(r for r in reqs if r.request_id == "chat-s0-t0")
    t1 = next(r for r in reqs if r.request_id == "chat-s0-t1")
    assert t1.prompt_ids[: len(t0.prompt_ids)] == t0.prompt_ids
    # all sessions share the system prompt
    s1 = next(r for r in reqs if r.request_id == "chat-s1-t0")
    assert s1.prompt_ids[:128] == t0.prompt_ids[:128]


def test_docs_workload_shares_documents() -> None:
    reqs = docs_workload(
        fake_tokenize,
        target_footprint_bytes=64 * 16 * 100,
        bytes_per_token=100,
        block_tokens=16,
        documents=2,
        questions_per_document=3,
    )
    assert len(reqs) == 6
    d0 = [r for r in reqs if r.request_id.startswith("docs-d0")]
    doc_len = len(d0[0].prompt_ids) - 24
    assert all(r.prompt_ids[:doc_len] == d0[0].prompt_ids[:doc_len] for r in d0)
