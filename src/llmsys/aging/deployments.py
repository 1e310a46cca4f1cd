"""Deployments: the serving processes an aging campaign starts, ages and watches.

Protocol: a :class:`DeploymentSpec` says what to run (a :class:`DeploymentKind` and its
options); a :class:`DeploymentProcess` owns the process: ``start`` launches it in its own
session (stdout and stderr to ``log_path``), ``wait_ready`` polls ``GET /health`` until it
answers 200, ``stop`` sends SIGTERM then SIGKILL, ``kill`` sends SIGKILL at once (a crash,
for tests), and ``restart`` is stop + start + wait_ready on the same port. ``current_pid``
is what a monitor follows: the new PID after a restart, ``None`` while the process is down.
An ``external`` deployment (vLLM, SGLang, anything OpenAI-compatible) is given by PID and
URL and is never started or stopped by llmsys.

Child processes run :func:`serve_deployment` (what ``llmsys aging serve KIND`` calls) through
``python -c`` for the ``injector`` and ``llmsys`` kinds, and ``python -m llama_cpp.server``
for ``llama-cpp``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO, Any

import psutil

from llmsys.aging.probe_errors import DeploymentError, ProbeConfigError

__all__ = ["DeploymentKind", "DeploymentProcess", "DeploymentSpec", "free_port", "serve_deployment"]

_LOG = logging.getLogger(__name__)
# The same call as ``llmsys aging serve KIND --config JSON`` without importing the whole CLI
# (every system's commands): a restart should cost the server's start-up, not the CLI's.
_CHILD_BOOT = (
    "import json, logging, sys; logging.basicConfig(level=logging.INFO); "
    "from llmsys.aging.deployments import DeploymentKind, serve_deployment; "
    "serve_deployment(DeploymentKind(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], "
    "int(sys.argv[4]))"
)


class DeploymentKind(Enum):
    """Which server a deployment runs; values are the ``llmsys aging serve`` names."""

    INJECTOR = "injector"
    LLMSYS = "llmsys"
    LLAMA_CPP = "llama-cpp"
    EXTERNAL = "external"


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    """What to run. Raises :class:`ProbeConfigError` when inconsistent."""

    name: str
    """Label used in file names and metric labels: letters, digits, ``-`` and ``_``."""
    kind: DeploymentKind
    """The server to run."""
    config: dict[str, Any] = field(default_factory=dict)
    """Options of the server kind (:class:`~llmsys.aging.injectors.InjectorConfig`,
    :class:`~llmsys.aging.openai_server.ServerConfig`,
    :class:`~llmsys.aging.llama_server.LlamaServerConfig` as plain values)."""
    port: int = 0
    """TCP port on 127.0.0.1; 0 picks a free one at the first start."""
    external_pid: int | None = None
    """PID of an ``external`` deployment (required for that kind, forbidden otherwise)."""
    external_url: str | None = None
    """Base URL of an ``external`` deployment, e.g. ``http://10.0.0.5:8000``."""
    metrics_path: str | None = None
    """Prometheus endpoint path; None: the kind's default (``/metrics`` for ``injector`` and
    ``llmsys``, none for ``llama-cpp`` and ``external``)."""
    health_path: str | None = None
    """Readiness path answering 200; None: ``/v1/models`` for ``llama-cpp``, else ``/health``."""

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_" for c in self.name):
            raise ProbeConfigError(f"deployment name {self.name!r} must be [A-Za-z0-9_-]+")
        if not isinstance(self.kind, DeploymentKind):
            raise ProbeConfigError(f"kind must be a DeploymentKind, not {self.kind!r}")
        if not 0 <= self.port <= 65535:
            raise ProbeConfigError(f"port must be in [0, 65535], not {self.port}")
        external = self.kind is DeploymentKind.EXTERNAL
        if external != (self.external_pid is not None):
            raise ProbeConfigError("external_pid is required for, and only for, 'external'")
        if external and not self.external_url:
            raise ProbeConfigError("an 'external' deployment needs external_url")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class DeploymentProcess:
    """A running (or runnable) deployment; see the module docstring for the lifecycle.

    Args:
        spec: what to run.
        log_path: file for the child's stdout and stderr (None: discarded).
    """

    def __init__(self, spec: DeploymentSpec, log_path: Path | None = None) -> None:
        self.spec = spec
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._port = spec.port
        self.starts = 0
        """How many times :meth:`start` launched a process."""

    # ----------------------------------------------------------------- addresses
    @property
    def url(self) -> str:
        """Base URL of the OpenAI-compatible API."""
        if self.spec.external_url:
            return self.spec.external_url.rstrip("/")
        if self._port == 0:
            raise DeploymentError(f"{self.spec.name} has no port yet: start it first")
        return f"http://127.0.0.1:{self._port}"

    @property
    def metrics_url(self) -> str | None:
        """URL of the Prometheus endpoint, or None."""
        path = self.spec.metrics_path
        if path is None and self.spec.kind in (DeploymentKind.INJECTOR, DeploymentKind.LLMSYS):
            path = "/metrics"
        return self.url + path if path else None

    @property
    def health_url(self) -> str:
        """URL polled by :meth:`wait_ready`."""
        path = self.spec.health_path
        if path is None:
            path = "/v1/models" if self.spec.kind is DeploymentKind.LLAMA_CPP else "/health"
        return self.url + path

    def current_pid(self) -> int | None:
        """PID of the live server process, or None while it is down."""
        if self.spec.kind is DeploymentKind.EXTERNAL:
            pid = self.spec.external_pid
            return pid if pid is not None and psutil.pid_exists(pid) else None
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    # ----------------------------------------------------------------- lifecycle
    def command(self) -> list[str]:
        """The child's argv (the port must be chosen)."""
        kind = self.spec.kind
        if kind is DeploymentKind.LLAMA_CPP:
            from llmsys.aging.llama_server import LlamaServerConfig, llama_server_command

            cfg = LlamaServerConfig.from_dict(self.spec.config)
            return llama_server_command(cfg, "127.0.0.1", self._port)
        return [
            sys.executable,
            "-c",
            _CHILD_BOOT,
            kind.value,
            json.dumps(self.spec.config),
            "127.0.0.1",
            str(self._port),
        ]

    def start(self) -> None:
        """Launch the process (no-op for ``external``). Raises DeploymentError if it is up."""
        if self.spec.kind is DeploymentKind.EXTERNAL:
            if self.current_pid() is None:
                raise DeploymentError(f"external PID {self.spec.external_pid} is not running")
            return
        if self.current_pid() is not None:
            raise DeploymentError(f"{self.spec.name} is already running")
        if self._port == 0:
            self._port = free_port()
        if self.log_path is not None and self._log is None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the child
        sink: IO[bytes] | int = self._log if self._log is not None else subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                start_new_session=True,
            )
        except OSError as exc:
            raise DeploymentError(f"could not start {self.spec.name}: {exc}") from exc
        self.starts += 1
        _LOG.info("started %s pid %d on port %d", self.spec.name, self._proc.pid, self._port)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Poll :attr:`health_url` until 200. Raises DeploymentError on exit or timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.spec.kind is not DeploymentKind.EXTERNAL and self.current_pid() is None:
                raise DeploymentError(f"{self.spec.name} exited during start-up{self._log_tail()}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=2.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"{self.spec.name} not ready after {timeout_s:.0f} s{self._log_tail()}"
                )
            time.sleep(0.1)

    def _signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the process group at once and reap it (a crash)."""
        self._signal(signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait()

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; idempotent; no-op for ``external``."""
        if self._proc is None:
            return
        self._signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, timeout_s: float = 120.0) -> None:
        """Stop, start again on the same port, and wait until ready."""
        self.stop()
        self.start()
        self.wait_ready(timeout_s)

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_bytes()[-2000:].decode(errors="replace")
        return f"; log tail ({self.log_path}):\n{text}"

    def __enter__(self) -> DeploymentProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_deployment(
    kind: DeploymentKind, config: dict[str, Any], host: str = "127.0.0.1", port: int = 0
) -> None:
    """Run one deployment's server in this process until it is stopped (blocking).

    ``llama-cpp`` replaces this process with ``python -m llama_cpp.server`` (exec), so
    signals reach the server itself.

    Raises:
        ProbeConfigError: ``external`` (llmsys does not run those) or a bad ``config``.
        ModelUnavailableError: the bundled model or llama-cpp-python is missing.
        OSError: the port cannot be bound.
    """
    if kind is DeploymentKind.INJECTOR:
        from llmsys.aging.injectors import InjectorConfig, serve_injector

        serve_injector(InjectorConfig.from_dict(config), host, port)
    elif kind is DeploymentKind.LLMSYS:
        from llmsys.aging.openai_server import ServerConfig, serve_llmsys

        serve_llmsys(ServerConfig.from_dict(config), host, port)
    elif kind is DeploymentKind.LLAMA_CPP:
        from llmsys.aging.llama_server import LlamaServerConfig, llama_server_command

        argv = llama_server_command(LlamaServerConfig.from_dict(config), host, port)
        os.execv(argv[0], argv)
    else:
        raise ProbeConfigError("an 'external' deployment is started outside llmsys")
