"""Launching a group of ranks over torch.distributed, with timeouts that name the culprit.

Protocol
--------
:func:`run_ranks` starts ``world_size`` processes (from a fork server that imported torch
once, or ``spawn``), each of which pins itself to
its cores, limits torch to :attr:`DistConfig.threads` threads, joins a process group
(gloo on CPU, NCCL when asked) whose collectives time out after
:attr:`DistConfig.timeout_s`, and calls ``fn(rank, world_size, *args)``. Each rank reports
its return value, or its exception as text, to the parent over a queue. The parent watches
three things and never waits forever:

* a process that **exits without reporting** (killed, crashed, ``os._exit``) - the run ends
  at once with :class:`RankFailedError` naming it;
* a rank that **reports an exception** - the others are given ``timeout_s`` to report too
  (a peer waiting in a collective sees the gloo timeout or a closed connection), then the
  run ends with :class:`RankFailedError` naming every rank that raised, root cause first;
* a rank that **hangs** - it has not reported ``timeout_s`` after another rank reported
  (finished or failed), or the whole run exceeded :attr:`DistConfig.job_timeout_s`; the run
  ends with :class:`RankTimeoutError` naming it. Peers stuck in a collective with a hung
  rank raise the gloo timeout, which counts as a report, so a hang is named within about
  ``2 * timeout_s``.

Surviving processes are terminated (then killed) before the error propagates, so no rank
outlives the call. Return values travel through a pickling queue: return plain Python or
numpy values, not tensors.
"""

from __future__ import annotations

import enum
import multiprocessing as mp
import os
import queue
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from llmsys.core.errors import ConfigError, LlmsysError


class Backend(enum.Enum):
    """torch.distributed backend."""

    GLOO = "gloo"
    """CPU tensors over TCP (works on any machine)."""
    NCCL = "nccl"
    """CUDA tensors (one GPU per rank)."""


class StartMethod(enum.Enum):
    """How rank processes are started (:mod:`multiprocessing` start methods)."""

    FORKSERVER = "forkserver"
    """Fork each rank from a server that imported torch once (fast, thread-safe)."""
    SPAWN = "spawn"
    """A fresh interpreter per rank (slowest: each imports torch)."""


class RankFailedError(LlmsysError, RuntimeError):
    """A rank died or raised; :attr:`ranks` names the culprits, root cause first."""

    def __init__(self, message: str, ranks: tuple[int, ...]) -> None:
        super().__init__(message)
        self.ranks = ranks


class RankTimeoutError(RankFailedError):
    """A rank hung: it reported nothing within the configured timeout."""


@dataclass(frozen=True, slots=True)
class DistConfig:
    """How :func:`run_ranks` starts a group.

    Raises:
        ConfigError: a count or timeout is not positive, or NCCL is asked for without CUDA.
    """

    world_size: int
    """Processes (ranks) to start."""
    backend: Backend = Backend.GLOO
    """Process-group backend."""
    timeout_s: float = 60.0
    """Collective timeout, and how long the parent waits for the other ranks once one has
    reported (finished or failed) before naming the silent ones as hung."""
    job_timeout_s: float | None = None
    """Wall-clock bound on the whole run (None: unbounded, hangs are still caught by
    ``timeout_s`` once any rank reports)."""
    threads: int = 1
    """torch intra-op threads per rank."""
    cores: tuple[int, ...] | None = None
    """Rank ``r`` pins itself to core ``cores[r % len(cores)]`` (None: no pinning)."""
    master_addr: str = "127.0.0.1"
    """Address of the rendezvous TCP store (rank 0 hosts it)."""
    start_method: StartMethod = StartMethod.FORKSERVER
    """How processes start."""
    preload: tuple[str, ...] = ("torch", "torch.distributed", "llmsys.moe.ep.layer")
    """Modules the fork server imports once, before forking ranks (add ``torch.optim``'s
    lazily imported ``torch._dynamo`` when ranks build optimizers). The fork server of a
    process keeps the preload list of its first use."""

    def __post_init__(self) -> None:
        if self.world_size < 1 or self.threads < 1:
            raise ConfigError("DistConfig.world_size and threads must be >= 1")
        if not self.timeout_s > 0 or (
            self.job_timeout_s is not None and not self.job_timeout_s > 0
        ):
            raise ConfigError("DistConfig.timeout_s and job_timeout_s must be > 0")
        if self.backend is Backend.NCCL and not torch.cuda.is_available():
            raise ConfigError("the nccl backend needs CUDA; use gloo on this machine")
        if self.cores is not None and (not self.cores or min(self.cores) < 0):
            raise ConfigError("DistConfig.cores must be a non-empty tuple of core ids")


def free_port(addr: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        port: int = s.getsockname()[1]
        return port


def _worker(
    rank: int,
    cfg: DistConfig,
    port: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    reports: Any,
) -> None:
    try:
        if cfg.cores is not None:
            os.sched_setaffinity(0, {cfg.cores[rank % len(cfg.cores)]})
        torch.set_num_threads(cfg.threads)
        if cfg.backend is Backend.NCCL:
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(
            cfg.backend.value,
            init_method=f"tcp://{cfg.master_addr}:{port}",
            rank=rank,
            world_size=cfg.world_size,
            timeout=timedelta(seconds=cfg.timeout_s),
        )
        # report before tearing the group down, so a root cause arrives before the
        # connection errors it causes in its peers
        reports.put((rank, True, fn(rank, cfg.world_size, *args)))
    except BaseException as exc:  # report everything, KeyboardInterrupt included
        reports.put((rank, False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _stop(procs: list[Any]) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 5.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(5.0)


def run_ranks(fn: Callable[..., Any], cfg: DistConfig, *args: Any) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on every rank; return the results in rank order.

    ``fn`` must be importable by name (started processes import it).

    Raises:
        RankFailedError: a rank exited without reporting, or raised (names the ranks).
        RankTimeoutError: a rank hung past the timeouts (names the rank).
    """
    ctx = mp.get_context(cfg.start_method.value)
    if cfg.start_method is StartMethod.FORKSERVER:
        ctx.set_forkserver_preload(list(cfg.preload))
    reports = ctx.Queue()
    port = free_port(cfg.master_addr)
    procs = [
        ctx.Process(target=_worker, args=(r, cfg, port, fn, args, reports), daemon=True)  # type: ignore[attr-defined]
        for r in range(cfg.world_size)
    ]
    for p in procs:
        p.start()
    start = time.monotonic()
    results: dict[int, Any] = {}
    errors: dict[int, str] = {}
    first_report: float | None = None
    try:
        while len(results) + len(errors) < cfg.world_size:
            try:
                rank, ok, payload = reports.get(timeout=0.05)
                (results if ok else errors)[rank] = payload
                first_report = first_report if first_report is not None else time.monotonic()
                continue
            except queue.Empty:
                pass
            now = time.monotonic()
            dead = [
                r
                for r, p in enumerate(procs)
                if r not in results and r not in errors and not p.is_alive()
            ]
            if dead:
                # drain a report that raced with the exit before blaming the rank
                time.sleep(0.2)
                while not reports.empty():
                    rank, ok, payload = reports.get_nowait()
                    (results if ok else errors)[rank] = payload
                dead = [r for r in dead if r not in results and r not in errors]
                if dead:
                    codes = ", ".join(f"rank {r} (exit code {procs[r].exitcode})" for r in dead)
                    raise RankFailedError(f"rank died without reporting: {codes}", tuple(dead))
            silent = [r for r in range(cfg.world_size) if r not in results and r not in errors]
            if first_report is not None and now - first_report > cfg.timeout_s:
                raise RankTimeoutError(
                    f"rank {', '.join(map(str, silent))} hung: no report {cfg.timeout_s:g} s "
                    f"after another rank reported"
                    + (f" (errors elsewhere: {_summary(errors)})" if errors else ""),
                    tuple(silent),
                )
            if cfg.job_timeout_s is not None and now - start > cfg.job_timeout_s:
                raise RankTimeoutError(
                    f"rank {', '.join(map(str, silent))} hung: job exceeded "
                    f"{cfg.job_timeout_s:g} s",
                    tuple(silent),
                )
        if errors:
            order = tuple(errors)  # arrival order: the root cause reports first
            raise RankFailedError(
                f"rank {order[0]} failed: {errors[order[0]]}"
                + (
                    f" (also failed: {_summary({r: errors[r] for r in order[1:]})})"
                    if order[1:]
                    else ""
                ),
                order,
            )
        return [results[r] for r in range(cfg.world_size)]
    finally:
        _stop(procs)
        reports.close()


def _summary(errors: dict[int, str]) -> str:
    return "; ".join(f"rank {r}: {msg.splitlines()[0]}" for r, msg in sorted(errors.items()))
