"""The serving comparison as one call: build workload, runner and namespace, then compare.

``llmsys tiermem bench`` and ``benchmarks/tiermem/bench_serving.py`` both call
:func:`run_serving_bench` with a :class:`ServingBenchOptions`; neither holds logic of its own.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmsys.core.errors import ConfigError
from llmsys.core.model import load_bundled_model
from llmsys.core.provenance import config_hash, git_sha
from llmsys.tiermem.keys import Namespace
from llmsys.tiermem.serving.compare import CacheConfig, compare_configs
from llmsys.tiermem.serving.runner import ModelRunner
from llmsys.tiermem.serving.workloads import (
    Request,
    chat_workload,
    docs_workload,
    no_reuse_workload,
    read_mooncake_trace,
)
from llmsys.tiermem.tiers import probe_cxl

__all__ = ["ServingBenchOptions", "Workload", "run_serving_bench"]


class Workload(enum.Enum):
    """Where requests come from."""

    CHAT = "chat"
    DOCS = "docs"
    TRACE = "trace"


@dataclass(frozen=True, slots=True)
class ServingBenchOptions:
    """Options of the serving comparison (the CLI's flags, one field each)."""

    workload: Workload = Workload.CHAT
    """Request source: chat sessions, shared documents, or a Mooncake trace."""
    trace: Path | None = None
    """Mooncake-format JSONL trace (workload ``trace``)."""
    requests: int | None = None
    """Trace requests to keep after ``skip`` (None: all)."""
    skip: int = 0
    """Leading trace requests to drop."""
    tokens_per_hash: int = 8
    """Tokens each 512-token trace hash block becomes."""
    block_tokens: int = 16
    """Tokens per KV block."""
    prefill_chunk_blocks: int = 4
    """Blocks per prefill forward pass; cache hits are used in whole chunks (bitwise exact)."""
    footprint_mib: float = 48.0
    """Target KV footprint of generated workloads, MiB."""
    ratios: tuple[int, ...] = (1, 2, 4, 8)
    """Footprint / dram ratios."""
    configs: tuple[CacheConfig, ...] = tuple(CacheConfig)
    """Configurations to run."""
    lookahead: int = 1
    """Requests of foresight look-ahead (itme)."""
    max_new_tokens: int = 4
    """Tokens generated per generated-workload request."""
    miss_requests: int = 4
    """Requests of the no-reuse workload used for the miss-path overhead (0: skip)."""
    repeats: int = 3
    """Interleaved repeats of the miss-path measurement (medians)."""
    serve_repeats: int = 1
    """Interleaved repetitions of every configuration; throughput is their median."""
    threads: int = 1
    """torch intra-op threads (1 keeps two-core timings stable)."""
    device: str = "auto"
    """Where the model runs: ``cpu``, ``cuda``, or ``auto`` (cuda when torch sees a GPU)."""
    work_dir: Path | None = None
    """Where ssd tiers put their files (default: the system temp dir)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form labels recorded with the result."""

    def __post_init__(self) -> None:
        """Raises: ConfigError: an option out of range or a trace workload without a file."""
        if self.workload is Workload.TRACE and self.trace is None:
            raise ConfigError("workload 'trace' needs a trace file (--trace FILE)")
        if self.block_tokens < 1 or self.tokens_per_hash < 1 or self.prefill_chunk_blocks < 1:
            raise ConfigError("block_tokens, tokens_per_hash and prefill_chunk_blocks must be >= 1")
        if self.footprint_mib <= 0:
            raise ConfigError("footprint_mib must be > 0")
        if not self.ratios or any(r < 1 for r in self.ratios):
            raise ConfigError("ratios must be integers >= 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, not {self.device!r}")
        if min(self.lookahead, self.threads, self.repeats, self.serve_repeats) < 1:
            raise ConfigError("lookahead, threads, repeats and serve_repeats must be >= 1")
        if self.max_new_tokens < 1 or self.miss_requests < 0 or self.skip < 0:
            raise ConfigError("max_new_tokens must be >= 1; miss_requests and skip >= 0")


def build_requests(
    options: ServingBenchOptions, tokenize: Callable[[str], list[int]], bytes_per_token: int
) -> list[Request]:
    """The workload's requests."""
    footprint = int(options.footprint_mib * 2**20)
    if options.workload is Workload.TRACE:
        assert options.trace is not None
        return read_mooncake_trace(
            options.trace,
            tokens_per_hash=options.tokens_per_hash,
            requests=options.requests,
            skip=options.skip,
        )
    kwargs = dict(
        target_footprint_bytes=footprint,
        bytes_per_token=bytes_per_token,
        block_tokens=options.block_tokens,
        max_new_tokens=options.max_new_tokens,
    )
    if options.workload is Workload.DOCS:
        return docs_workload(tokenize, **kwargs)
    return chat_workload(tokenize, **kwargs)


def run_serving_bench(
    options: ServingBenchOptions, progress: Callable[[str, int, int], None] | None = None
) -> dict[str, Any]:
    """Run the comparison; return the summary dict (the issue's keys plus provenance)."""
    torch.set_num_threads(options.threads)
    bundled = load_bundled_model()
    device = options.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    bundled.model.to(device)
    runner = ModelRunner(bundled, options.block_tokens, options.prefill_chunk_blocks)
    g = runner.geometry
    namespace = Namespace(
        bundled.fingerprint,
        str(g.dtype).removeprefix("torch."),
        g.layout,
        g.block_tokens,
        g.block_bytes,
    )

    def tokenize(text: str) -> list[int]:
        return list(bundled.tokenizer(text, add_special_tokens=False)["input_ids"])

    requests = build_requests(options, tokenize, g.bytes_per_token)
    miss = (
        no_reuse_workload(
            tokenize,
            requests=options.miss_requests,
            prompt_tokens=256,
            max_new_tokens=options.max_new_tokens,
        )
        if options.miss_requests
        else []
    )
    result = compare_configs(
        runner,
        namespace,
        requests,
        configs=options.configs,
        ratios=options.ratios,
        miss_requests=miss,
        lookahead=options.lookahead,
        work_dir=options.work_dir,
        progress=progress,
        repeats=options.repeats,
        serve_repeats=options.serve_repeats,
    )
    headline = 4 if 4 in options.ratios else max(options.ratios)
    summary = result.summary(headline)
    cfg = asdict(options)
    summary.update(
        {
            "headline_ratio": headline,
            "requests": len(requests),
            "prompt_tokens_total": sum(len(r.prompt_ids) for r in requests),
            "workload": options.workload.value,
            "block_tokens": options.block_tokens,
            # the workload's recipe, so a simulator can rebuild the same requests
            "footprint_mib": options.footprint_mib,
            "max_new_tokens": options.max_new_tokens,
            "tokens_per_hash": options.tokens_per_hash,
            "skip": options.skip,
            "lookahead": options.lookahead,
            "prefill_chunk_tokens": runner.chunk_tokens,
            "prefill": "fixed chunk grid; hits used in whole chunks (bitwise-exact cache hits)",
            "device": device,
            "cxl_backend": probe_cxl().backend.value,
            "git_sha": git_sha(),
            "config_hash": config_hash(cfg),
        }
    )
    return summary
