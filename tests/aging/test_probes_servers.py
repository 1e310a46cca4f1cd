"""Real LLM servers to age: llmsys's transformers server and llama.cpp's (when installed)."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from probe_helpers import MIB

from llmsys.aging.deployments import DeploymentKind, DeploymentProcess, DeploymentSpec
from llmsys.aging.llama_server import (
    LLAMA_CONFIGS,
    LlamaServerConfig,
    llama_cpp_available,
    llama_server_command,
)
from llmsys.aging.loadgen import ArrivalProcess, Endpoint, LoadConfig, run_load
from llmsys.aging.openai_server import GcMode, ServerConfig, TransformersEngine
from llmsys.aging.probe_errors import ProbeConfigError
from llmsys.aging.procfs import ProcessTree, scrape_prometheus
from llmsys.core.errors import ModelUnavailableError

QUESTION = "What is the capital of France?"


def _post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def bundled() -> Any:
    from llmsys.core.model import load_bundled_model

    return load_bundled_model()


@pytest.fixture(scope="module")
def llmsys_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeploymentProcess]:
    log = tmp_path_factory.mktemp("llmsys") / "server.log"
    spec = DeploymentSpec("llmsys", DeploymentKind.LLMSYS, {"threads": 1, "gc_mode": "freeze"})
    with DeploymentProcess(spec, log) as dep:
        dep.start()
        dep.wait_ready(300)
        yield dep


def test_llmsys_server_answers_with_the_models_greedy_tokens(
    llmsys_server: DeploymentProcess, bundled: Any
) -> None:
    from llmsys.core.model import greedy_generate

    url = llmsys_server.url
    resp = _post(
        url + "/v1/chat/completions",
        {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8},
    )
    # the same prompt through the reference greedy decoder of llmsys.core.model
    engine = TransformersEngine(ServerConfig(), bundled)
    ids = bundled.tokenizer(engine.chat_prompt([{"role": "user", "content": QUESTION}]))
    want = greedy_generate(bundled, list(ids["input_ids"]), 8)
    text = resp["choices"][0]["message"]["content"]
    assert text == bundled.tokenizer.decode(want, skip_special_tokens=True)
    assert "Paris" in text
    assert resp["usage"]["prompt_tokens"] == len(ids["input_ids"])


def test_llmsys_server_streams_and_reuses_the_prefix(
    llmsys_server: DeploymentProcess, tmp_path: Path
) -> None:
    url = llmsys_server.url
    before = scrape_prometheus(url + "/metrics", 5)
    cfg = LoadConfig(
        url=url,
        arrival=ArrivalProcess.CLOSED,
        max_requests=2,
        duration_s=120,
        endpoint=Endpoint.CHAT,
        output_tokens_median=6,
        output_tokens_sigma=0.0,
        prompt_words_median=20,
        prompt_words_sigma=0.0,
    )
    summary = run_load(cfg, tmp_path / "a")
    assert summary.requests_ok == 2 and summary.tokens == 12
    assert summary.ttft_p50_s is not None and summary.itl_p50_s is not None
    after = scrape_prometheus(url + "/metrics", 5)
    assert after["llmsys_requests_total"] - before["llmsys_requests_total"] == 2
    assert after["llmsys_generated_tokens_total"] - before["llmsys_generated_tokens_total"] == 12
    # the chat template's system preamble is shared by both prompts: it is served from cache
    assert after["llmsys_prefix_hit_tokens_total"] > before["llmsys_prefix_hit_tokens_total"]
    assert 1 <= after["llmsys_prefix_cache_entries"] <= 8


def test_prefix_reuse_gives_the_same_tokens_as_no_reuse(bundled: Any) -> None:
    # p2 extends p1; the third call hits p2's entry, cropped back to p1's length.
    prompts = [
        "one two three four five six",
        "one two three four five six seven",
        "one two three four five six",
    ]
    outputs = {}
    for reuse in (True, False):
        engine = TransformersEngine(
            ServerConfig(prefix_reuse=reuse, prefix_cache_entries=1), bundled
        )
        outputs[reuse] = ["".join(engine.generate(p, 2)[1]) for p in prompts]
        if reuse:
            assert len(engine._prefixes) == 1  # the LRU bound holds
    assert outputs[True] == outputs[False]
    assert outputs[True][0] == outputs[True][2]


def test_server_config_validation() -> None:
    cfg = ServerConfig.from_dict({"gc_mode": "disabled", "threads": 2})
    assert cfg.gc_mode is GcMode.DISABLED and ServerConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (
        {"threads": 0},
        {"gc_mode": "sometimes"},
        {"prefix_reuse_": True},
        {"max_context_tokens": 8},
    ):
        with pytest.raises(ProbeConfigError):
            ServerConfig.from_dict(bad)


# ------------------------------------------------------------------- llama.cpp
def test_llama_command_carries_the_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("llmsys.aging.llama_server.llama_cpp_available", lambda: True)
    argv = llama_server_command(
        LlamaServerConfig(cache=True, use_mmap=False, n_ctx=512), "127.0.0.1", 8123
    )
    flags = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert argv[1:3] == ["-m", "llama_cpp.server"]
    assert flags["--cache"] == "true" and flags["--use_mmap"] == "false"
    assert flags["--n_ctx"] == "512" and flags["--port"] == "8123"
    assert flags["--model"].endswith(".gguf")
    monkeypatch.setattr("llmsys.aging.llama_server.llama_cpp_available", lambda: False)
    with pytest.raises(ModelUnavailableError, match="llama-cpp-python"):
        llama_server_command(LlamaServerConfig(), "127.0.0.1", 8123)
    assert set(LLAMA_CONFIGS) >= {"llama-cache-on", "llama-cache-off", "llama-no-mmap"}


needs_llama = pytest.mark.skipif(
    not llama_cpp_available(),
    reason="llama-cpp-python[server] is not installed (pip install 'llama-cpp-python[server]')",
)


@needs_llama
def test_llama_cpp_configurations_serve_and_differ_in_memory(tmp_path: Path) -> None:
    anon = {}
    for use_mmap in (True, False):
        config = {"use_mmap": use_mmap, "cache": use_mmap, "n_ctx": 256}
        spec = DeploymentSpec(f"llama-mmap-{use_mmap}".lower(), DeploymentKind.LLAMA_CPP, config)
        with DeploymentProcess(spec, tmp_path / f"{spec.name}.log") as dep:
            dep.start()
            dep.wait_ready(120)
            assert dep.metrics_url is None  # llama-cpp-python has no /metrics
            pid = dep.current_pid()
            assert pid is not None and pid != os.getpid()
            time.sleep(0.5)
            anon[use_mmap] = ProcessTree(pid).sample_detail()["anon_bytes"]
            if not use_mmap:
                continue
            # greedy decoding of one prompt twice: the same non-empty text (the Q4_1 weights
            # need not agree with the de-quantised transformers model token for token)
            body = {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0.0}
            texts = [_post(dep.url + "/v1/completions", body)["choices"][0]["text"] for _ in "ab"]
            assert texts[0].strip() and texts[0] == texts[1]
            # the load generator streams from it: TTFT and per-token chunks
            cfg = LoadConfig(
                url=dep.url,
                arrival=ArrivalProcess.CLOSED,
                max_requests=2,
                duration_s=120,
                output_tokens_median=4,
                output_tokens_sigma=0.0,
            )
            summary = run_load(cfg, tmp_path / "load")
            assert summary.requests_ok == 2 and summary.tokens >= 2
            assert summary.ttft_p50_s is not None
    # the 98 MB GGUF is read into anonymous pages when it is not mapped
    assert anon[False] - anon[True] > 50 * MIB
