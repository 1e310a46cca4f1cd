"""llama.cpp deployments: llama-cpp-python's OpenAI server over the bundled SmolLM2 GGUF.

Protocol: a :class:`LlamaServerConfig` names one configuration (context size, prompt cache
on/off and its bound, mmap on/off, threads); :func:`llama_server_command` turns it into the
argv of ``python -m llama_cpp.server --model GGUF --host H --port P ...``, which
:class:`~llmsys.aging.deployments.DeploymentProcess` runs as a child process. The server has
no ``/health`` or ``/metrics``: readiness is ``GET /v1/models`` and the monitor's
requests/tokens come from the load generator
(``MonitorTarget(counters=LoadProgress().counts)``). :data:`LLAMA_CONFIGS` are the named
configurations a campaign ages side by side (the prompt cache is the llama.cpp "leak" that
is really a bounded cache).

Raises :class:`~llmsys.core.errors.ModelUnavailableError` when ``llama_cpp`` (the
``llama-cpp-python[server]`` package) or the bundled GGUF is missing.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmsys.aging.probe_errors import ProbeConfigError
from llmsys.core.errors import ModelUnavailableError

__all__ = [
    "LLAMA_CONFIGS",
    "LlamaServerConfig",
    "llama_cpp_available",
    "llama_server_command",
]


@dataclass(frozen=True, slots=True)
class LlamaServerConfig:
    """One llama.cpp server configuration. Raises :class:`ProbeConfigError` when out of range."""

    n_ctx: int = 2048
    """Context window, tokens (>= 64)."""
    cache: bool = False
    """llama-cpp-python's RAM prompt cache (``--cache``): saves KV states of past prompts."""
    cache_size_bytes: int = 256 << 20
    """Bound of the prompt cache (``--cache_size``), bytes (>= 1 MiB). llama-cpp-python
    counts only each saved state's KV bytes against it; every state also holds a float32
    ``scores`` copy of ``min(n_tokens, n_batch) x n_vocab`` (192 KiB per token for
    SmolLM2), so the resident cache settles near ten times this bound (measured by
    ``benchmarks/aging/bench_llama_prompt_cache.py``)."""
    use_mmap: bool = True
    """Map the GGUF file (file-backed, shared) instead of reading it into anonymous memory."""
    use_mlock: bool = False
    """Lock the model's pages in RAM (``--use_mlock``; llama-cpp-python defaults to on, off
    here so that mapped weights can be paged like on an ordinary host)."""
    n_threads: int = 1
    """Threads for generation (>= 1)."""
    n_batch: int = 256
    """Prompt-processing batch, tokens (>= 1)."""
    model_path: str | None = None
    """GGUF to serve (None: the bundled SmolLM2 GGUF)."""

    def __post_init__(self) -> None:
        if self.n_ctx < 64 or self.n_threads < 1 or self.n_batch < 1:
            raise ProbeConfigError("n_ctx must be >= 64, n_threads and n_batch >= 1")
        if self.cache_size_bytes < 1 << 20:
            raise ProbeConfigError("cache_size_bytes must be >= 1 MiB")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LlamaServerConfig:
        """Build from plain values; unknown keys are an error."""
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ProbeConfigError(f"unknown llama-cpp option(s) {unknown}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, the inverse of :meth:`from_dict`."""
        return asdict(self)


LLAMA_CONFIGS: dict[str, LlamaServerConfig] = {
    "llama-cache-off": LlamaServerConfig(cache=False),
    "llama-cache-on": LlamaServerConfig(cache=True),
    "llama-no-mmap": LlamaServerConfig(use_mmap=False),
    "llama-ctx-512": LlamaServerConfig(n_ctx=512),
}
"""Named configurations: prompt cache off/on, mmap off, small context."""


def llama_cpp_available() -> bool:
    """True when ``llama_cpp`` and its server extra (uvicorn, fastapi) can be imported."""
    return all(importlib.util.find_spec(m) is not None for m in ("llama_cpp", "uvicorn"))


def _flag(value: bool) -> str:
    return "true" if value else "false"


def llama_server_command(config: LlamaServerConfig, host: str, port: int) -> list[str]:
    """Return the argv that serves ``config`` on ``host:port``.

    Raises:
        ModelUnavailableError: llama-cpp-python[server] or the bundled GGUF is missing.
    """
    if not llama_cpp_available():
        raise ModelUnavailableError(
            "the llama-cpp deployment needs llama-cpp-python with its server extra "
            "(run: pip install 'llama-cpp-python[server]')"
        )
    if config.model_path is not None:
        model = Path(config.model_path)
        if not model.is_file():
            raise ModelUnavailableError(f"GGUF {model} does not exist")
    else:
        from llmsys.core.model import bundled_gguf_path

        model = bundled_gguf_path()
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(config.n_ctx),
        "--n_threads",
        str(config.n_threads),
        "--n_batch",
        str(config.n_batch),
        "--use_mmap",
        _flag(config.use_mmap),
        "--use_mlock",
        _flag(config.use_mlock),
        "--cache",
        _flag(config.cache),
        "--cache_type",
        "ram",
        "--cache_size",
        str(config.cache_size_bytes),
        "--verbose",
        "false",
    ]
