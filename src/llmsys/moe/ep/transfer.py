"""The transfer engine: expert weights for micro-step m+1 move while micro-step m computes.

Protocol
--------
Router replay makes every micro-step's placement known before it runs, so every rank can
compute, identically, which replicas each rank will need next (:func:`replica_needs`) and
which of them it does not hold yet. :func:`plan_moves` (pure) turns that into a list of
:class:`Move` s and picks a :class:`TransferPath` for each from a modelled finish time
(:class:`LinkModel`; moves queue per channel, so a busy path loses moves to the other):

* ``DIRECT`` - rank to rank: the home rank ``isend`` s the packed weights, the needing rank
  ``irecv`` s them (a separate gloo/NCCL group, so transfers never interleave with the
  dispatch all-to-alls);
* ``HOST`` - CPU-assisted: at the start of each mini-batch every rank publishes its home
  experts into a node-local shared host copy (:class:`HostCopy`, a shared-memory file with
  per-rank version flags); a needing rank copies from it without involving the home rank.
  The copy is valid for the whole mini-batch because weights are frozen under gradient
  accumulation.

:class:`TransferEngine` runs the plan: :meth:`~TransferEngine.begin_minibatch` (drop stale
replicas, publish), :meth:`~TransferEngine.prefetch` (post the moves for the next micro-step;
returns at once), :meth:`~TransferEngine.retire` (after a micro-step, evict replicas the
next one does not use). Each move is an :class:`~llmsys.moe.ep.replicas.Arrival` in the
:class:`~llmsys.moe.ep.replicas.ReplicaStore` - its completion event: a direct move
completes when its receive does (gloo/NCCL progress it in their own threads, overlapping
the micro-step before), a host move is copied from shared memory when first needed (on a
CPU rank a helper thread cannot overlap it, see :class:`_HostArrival`). A layer that needs
a replica not yet landed waits there, and that wait (copy time included) is recorded as
exposed transfer time.
"""

from __future__ import annotations

import enum
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from llmsys.core.errors import ConfigError
from llmsys.moe.ep.comm import ProcessGroup
from llmsys.moe.ep.layer import EPMoELayer
from llmsys.moe.ep.replicas import (
    Arrival,
    ExpertWeights,
    Key,
    ReplicaError,
    ReplicaStore,
)
from llmsys.moe.placement import Placement


class TransferPath(enum.Enum):
    """How one replica's weights travel."""

    DIRECT = "direct"
    """Home rank to needing rank, point to point."""
    HOST = "host"
    """From the node-local shared host copy, published once per mini-batch."""


@dataclass(frozen=True, slots=True)
class LinkModel:
    """Modelled cost of one move on each path: ``latency + bytes / bandwidth``.

    Raises:
        ConfigError: a figure is not positive.
    """

    direct_latency_s: float
    """Fixed cost of one point-to-point move."""
    direct_bytes_per_s: float
    """Point-to-point bandwidth (a home rank's sends, and a rank's receives, queue)."""
    host_latency_s: float
    """Fixed cost of one copy from the host copy."""
    host_bytes_per_s: float
    """Copy bandwidth from the host copy (a rank's copies queue)."""

    def __post_init__(self) -> None:
        for name in (
            "direct_latency_s",
            "direct_bytes_per_s",
            "host_latency_s",
            "host_bytes_per_s",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"LinkModel.{name} must be > 0")


@dataclass(frozen=True, slots=True)
class Move:
    """One replica's weights travelling to the rank that needs them."""

    layer: int
    """Layer of the expert."""
    expert: int
    """Expert moved."""
    src_rank: int
    """Home rank of the expert."""
    dst_rank: int
    """Rank that needs it."""
    path: TransferPath
    """Path chosen."""
    modelled_finish_s: float
    """Modelled finish time, seconds after the moves were posted."""


def replica_needs(placement: Placement, home_rank: Callable[[int, int], int]) -> list[set[Key]]:
    """Per rank, the ``(layer, expert)`` replicas it computes with tokens but does not home."""
    topo = placement.topology
    gpu = topo.slot_gpu()
    needs: list[set[Key]] = [set() for _ in range(topo.num_gpus)]
    li, si = np.nonzero(placement.slot_filled & (placement.slot_tokens > 0))
    for layer, slot in zip(li.tolist(), si.tolist(), strict=True):
        e = int(placement.slot_expert[layer, slot])
        if home_rank(layer, e) != gpu[slot]:
            needs[int(gpu[slot])].add((layer, e))
    return needs


def plan_moves(
    needs: Sequence[set[Key]],
    resident: Sequence[set[Key]],
    home_rank: Callable[[int, int], int],
    move_bytes: int,
    model: LinkModel,
    host_available: bool = True,
) -> list[Move]:
    """Moves that bring every rank its needed replicas; each takes the path that finishes first.

    Moves are taken in ``(layer, expert, rank)`` order (early layers are needed first). A
    direct move starts when both the home rank's send queue and the receiver's queue are
    free; a host move when the receiver's copy queue is free. Ties go to ``DIRECT``.
    """
    world = len(needs)
    send_free = np.zeros(world)
    recv_free = np.zeros(world)
    host_free = np.zeros(world)
    pairs = sorted((key, dst) for dst in range(world) for key in needs[dst] - resident[dst])
    moves: list[Move] = []
    for (layer, expert), dst in pairs:
        src = home_rank(layer, expert)
        d_start = max(send_free[src], recv_free[dst])
        d_end = d_start + model.direct_latency_s + move_bytes / model.direct_bytes_per_s
        h_end = (
            host_free[dst] + model.host_latency_s + move_bytes / model.host_bytes_per_s
            if host_available
            else math.inf
        )
        if d_end <= h_end:
            send_free[src] = recv_free[dst] = d_end
            moves.append(Move(layer, expert, src, dst, TransferPath.DIRECT, float(d_end)))
        else:
            host_free[dst] = h_end
            moves.append(Move(layer, expert, src, dst, TransferPath.HOST, float(h_end)))
    return moves


class HostCopy:
    """Node-local shared host copy of every expert's packed weights, plus version flags.

    ``weights [layers, experts, expert_numel]`` and ``flags [world]`` live in two files
    (typically under ``/dev/shm``) that every rank maps; rank ``r`` sets ``flags[r]`` to the
    mini-batch version after writing its home experts. Once every rank has mapped them, one
    rank should :meth:`unlink` the files (the mappings stay valid), so a crash leaves
    nothing behind.
    """

    def __init__(
        self,
        directory: Path,
        run_id: str,
        layers: int,
        experts: int,
        numel: int,
        world: int,
        dtype: torch.dtype,
    ) -> None:
        self.paths = (directory / f"llmsys-moe-{run_id}.w", directory / f"llmsys-moe-{run_id}.f")
        sizes = (layers * experts * numel, world)
        dtypes = (dtype, torch.int64)
        tensors = []
        for path, size, dt in zip(self.paths, sizes, dtypes, strict=True):
            nbytes = size * torch.empty(0, dtype=dt).element_size()
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < nbytes:
                    os.ftruncate(fd, nbytes)
            finally:
                os.close(fd)
            tensors.append(torch.from_file(str(path), shared=True, size=size, dtype=dt))
        self.weights = tensors[0].view(layers, experts, numel)
        self.flags = tensors[1]

    def publish(
        self,
        layers: Sequence[EPMoELayer],
        rank: int,
        version: int,
        only: set[Key] | None = None,
    ) -> None:
        """Write this rank's home experts of every layer (or those in ``only``), then raise
        its flag."""
        for layer in layers:
            for e in layer.home_experts:
                if only is not None and (layer.layer_index, e) not in only:
                    continue
                parts = [w.reshape(-1) for w in layer.home_weights(e)]
                if parts[0].device.type == "cpu":
                    torch.cat(parts, out=self.weights[layer.layer_index, e])
                else:  # device weights (NCCL runs): gather on the device, copy down once
                    self.weights[layer.layer_index, e].copy_(torch.cat(parts))
        self.flags[rank] = version

    def read(self, key: Key, src_rank: int, version: int, timeout_s: float) -> torch.Tensor:
        """A private copy of one expert's packed weights, once its home has published them."""
        deadline = time.monotonic() + timeout_s
        while int(self.flags[src_rank]) < version:
            if time.monotonic() > deadline:
                raise ReplicaError(f"rank {src_rank} did not publish version {version} in time")
            time.sleep(50e-6)
        return self.weights[key].clone()

    def unlink(self) -> None:
        """Remove the files (mappings stay valid until released)."""
        for path in self.paths:
            path.unlink(missing_ok=True)


def _unpack(flat: torch.Tensor, d: int, f: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = d * f
    return flat[:n].view(d, f), flat[n : 2 * n].view(d, f), flat[2 * n :].view(f, d)


class _WorkArrival(Arrival):
    """A point-to-point receive: gloo/NCCL progress it in their own threads, no Python
    thread is involved until the layer asks for the weights."""

    def __init__(self, work: Any, buf: torch.Tensor, d: int, f: int) -> None:
        self._work, self._buf, self._d, self._f = work, buf, d, f
        self._weights: ExpertWeights | None = None

    def done(self) -> bool:
        return self._weights is not None or bool(self._work.is_completed())

    def wait(self, timeout_s: float) -> ExpertWeights | None:
        if self._weights is None:
            self._work.wait()  # bounded by the process group's timeout
            self._weights = _unpack(self._buf, self._d, self._f)
        return self._weights


class _HostArrival(Arrival):
    """A copy from the node's host copy, made on the computing thread when first needed.

    On a CPU rank pinned to one core a helper thread cannot overlap the copy with compute
    (it needs the same core) and only contends for the interpreter lock: measured, it
    slowed every micro-step more than the copies cost. So the copy (a memcpy from shared
    memory, ~0.1 ms per expert here) happens at first use and counts as exposed time.
    """

    def __init__(
        self, host: HostCopy, key: Key, src: int, version: int, engine: TransferEngine
    ) -> None:
        self._host, self._key, self._src, self._version, self._engine = (
            host,
            key,
            src,
            version,
            engine,
        )
        self._weights: ExpertWeights | None = None

    def done(self) -> bool:
        return self._weights is not None

    def wait(self, timeout_s: float) -> ExpertWeights | None:
        if self._weights is None:
            buf = self._host.read(self._key, self._src, self._version, timeout_s)
            self._weights = _unpack(
                buf.to(self._engine.device), self._engine.hidden, self._engine.ffn
            )
        return self._weights


class TransferEngine:
    """Posts and completes the moves of each micro-step on one rank (see the module doc)."""

    def __init__(
        self,
        layers: Sequence[EPMoELayer],
        store: ReplicaStore,
        model: LinkModel,
        host: HostCopy | None = None,
        group: ProcessGroup | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.layers, self.store, self.model = layers, store, model
        self.host, self.group = host, group
        self.rank, self.world = layers[0].rank, layers[0].world
        self.timeout_s = timeout_s
        cfg = layers[0].cfg
        self.hidden, self.ffn = cfg.hidden, cfg.expert_ffn
        self._dtype = layers[0].w1.dtype
        self.device = layers[0].w1.device
        self.move_bytes = layers[0].expert_numel * layers[0].w1.element_size()
        self.resident: list[set[Key]] = [set() for _ in range(self.world)]
        self.version = 0
        self.moves: list[Move] = []
        """Every move posted so far (all ranks' moves, as planned)."""
        self.publish_s = 0.0
        """Seconds spent publishing home experts into the host copy."""
        self._tag = 0
        self._sends: list[tuple[Any, torch.Tensor]] = []

    def home_rank(self, layer: int, expert: int) -> int:
        """Rank homing ``expert`` in ``layer``."""
        return self.layers[layer].home_rank(expert)

    def begin_minibatch(self, placements: Sequence[Placement] | None = None) -> None:
        """Weights changed (or first use): wait for sends, drop replicas, publish the host copy.

        With the mini-batch's ``placements`` (known ahead under router replay) only the
        experts some rank will replicate in it are published.
        """
        self.drain()
        self.store.invalidate()
        self.resident = [set() for _ in range(self.world)]
        self.version += 1
        if self.host is not None:
            t0 = time.perf_counter()
            only = None
            if placements is not None:
                only = set().union(
                    *(k for p in placements for k in replica_needs(p, self.home_rank))
                )
            self.host.publish(self.layers, self.rank, self.version, only)
            self.publish_s += time.perf_counter() - t0

    def prefetch(self, placement: Placement) -> list[Move]:
        """Post the moves ``placement`` needs; returns at once (arrivals land in the store).

        Every rank must call it with the same placement (the plan is computed identically
        everywhere, so sends and receives pair up).
        """
        needs = replica_needs(placement, self.home_rank)
        moves = plan_moves(
            needs, self.resident, self.home_rank, self.move_bytes, self.model, self.host is not None
        )
        for mv in moves:
            tag, self._tag = self._tag, self._tag + 1
            key = (mv.layer, mv.expert)
            if mv.path is TransferPath.DIRECT and mv.src_rank == self.rank:
                weights = self.layers[mv.layer].home_weights(mv.expert)
                buf = torch.cat([w.reshape(-1) for w in weights])
                self._sends.append((dist.isend(buf, mv.dst_rank, group=self.group, tag=tag), buf))
            if mv.dst_rank != self.rank:
                continue
            if mv.path is TransferPath.DIRECT:
                numel = self.layers[0].expert_numel
                buf = torch.empty(numel, dtype=self._dtype, device=self.device)
                work = dist.irecv(buf, mv.src_rank, group=self.group, tag=tag)
                self.store.expect(key, _WorkArrival(work, buf, self.hidden, self.ffn))
            else:
                assert self.host is not None
                self.store.expect(
                    key, _HostArrival(self.host, key, mv.src_rank, self.version, self)
                )
        for r in range(self.world):
            self.resident[r] |= needs[r]
        self.moves.extend(moves)
        return moves

    def retire(self, placement: Placement) -> None:
        """After a micro-step: keep only the replicas ``placement`` (the next one) uses."""
        needs = replica_needs(placement, self.home_rank)
        self.resident = [self.resident[r] & needs[r] for r in range(self.world)]
        self.store.evict(needs[self.rank])

    def drain(self) -> None:
        """Wait until every posted send has left (before home weights change)."""
        for work, _ in self._sends:
            work.wait()
        self._sends = []

    def close(self) -> None:
        """Finish posted sends."""
        self.drain()
