"""Running a sequence of replayed micro-steps on an expert-parallel model.

Protocol
--------
:func:`shard_model` turns a single-process :class:`~llmsys.moe.lm.model.MoELM` into rank
``r`` 's part, in place: every block's MoE FFN becomes an
:class:`~llmsys.moe.ep.layer.EPMoELayer` holding the rank's home experts; everything else
(embeddings, attention, norms, routers) is replicated, data parallel.

A :class:`MicroStep` is one micro-step of the whole group: all its sequences with their
replayed routes, and the placement that serves them. Sequences are split over ranks in
contiguous blocks (:func:`rank_rows`); :func:`rank_counts` gives the per-rank loads every
layer needs, known in advance under router replay.

:class:`Executor` runs one mini-batch of gradient accumulation (:meth:`Executor.run_minibatch`):

1. ``engine.begin_minibatch(placements)`` (weights changed: drop replicas, publish to the
   host copy the experts this mini-batch replicates),
   then prefetch micro-step 0's replicas;
2. per micro-step ``m``: set every layer's placement row and counts, post the prefetch of
   micro-step ``m+1``'s replicas, run forward and backward of ``loss_fn`` on this rank's
   sequences (replicas still in flight are waited for inside the layer: exposed time),
   retire the replicas ``m+1`` does not use;
3. reduce replica gradients to their homes and all-reduce the replicated parameters'
   gradients. The caller then steps its optimizer (over :meth:`Executor.parameters`: home
   experts plus replicated parameters, so optimizer state exists only at home).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from llmsys.core.errors import InputError
from llmsys.moe.ep.comm import ProcessGroup, all_reduce_grads
from llmsys.moe.ep.layer import EPMoELayer
from llmsys.moe.ep.replicas import ReplicaStore, reduce_replica_grads
from llmsys.moe.ep.transfer import TransferEngine, replica_needs
from llmsys.moe.lm.model import ForwardOut, MoELayer, MoELM, RouteMode
from llmsys.moe.placement import Placement
from llmsys.moe.topology import HomeLayout

IntArray = npt.NDArray[np.int64]


def shard_model(
    model: MoELM,
    homes: HomeLayout,
    rank: int,
    store: ReplicaStore,
    group: ProcessGroup | None = None,
) -> list[EPMoELayer]:
    """Replace ``model`` 's MoE layers by this rank's expert-parallel layers (in place)."""
    layers = []
    for i, blk in enumerate(model.blocks):
        ref = blk.moe
        if not isinstance(ref, MoELayer):
            raise InputError(f"block {i} has no single-process MoE layer to shard")
        ep = EPMoELayer.from_reference(ref, i, homes, rank, store, group)
        ep.train(ref.training)
        blk.moe = ep
        layers.append(ep)
    return layers


def rank_rows(num_seqs: int, world: int, rank: int) -> slice:
    """Contiguous block of a micro-step's sequences that ``rank`` runs."""
    bounds = np.linspace(0, num_seqs, world + 1).round().astype(int)
    return slice(int(bounds[rank]), int(bounds[rank + 1]))


def rank_counts(
    routes: torch.Tensor, valid: torch.Tensor, world: int, num_experts: int
) -> IntArray:
    """``[world, layers, experts]`` valid tokens each rank routes to each expert.

    Args:
        routes: ``[seqs, T, layers, top_k]`` replayed routes of the whole micro-step.
        valid: ``[seqs, T]`` real tokens.
    """
    layers = routes.shape[2]
    out = np.zeros((world, layers, num_experts), dtype=np.int64)
    for r in range(world):
        sl = rank_rows(routes.shape[0], world, r)
        picked = routes[sl][valid[sl]]  # [n, L, k]
        offs = torch.arange(layers).view(1, layers, 1) * num_experts
        flat = torch.bincount((picked + offs).reshape(-1), minlength=layers * num_experts)
        out[r] = flat.view(layers, num_experts).numpy()
    return out


@dataclass(frozen=True, slots=True)
class MicroStep:
    """One micro-step of the whole group.

    Raises:
        InputError: shapes disagree, or the placement does not serve the routed loads.
    """

    tokens: torch.Tensor
    """``[seqs, T]`` input token ids."""
    valid: torch.Tensor
    """``[seqs, T]`` real tokens."""
    routes: torch.Tensor
    """``[seqs, T, layers, top_k]`` replayed routes (int64)."""
    placement: Placement
    """Placement serving this micro-step's loads."""
    counts: IntArray = field(repr=False)
    """``[world, layers, experts]`` from :func:`rank_counts`."""

    def __post_init__(self) -> None:
        if self.valid.shape != self.tokens.shape or self.routes.shape[:2] != self.tokens.shape:
            raise InputError("tokens, valid and routes disagree in [seqs, T]")
        self.placement.check_against(self.counts.sum(axis=0))


@dataclass(frozen=True, slots=True)
class MinibatchStats:
    """Measured times of one mini-batch on this rank."""

    micro_wall_s: tuple[float, ...]
    """Forward plus backward wall time of each micro-step (exposed waits included)."""
    exposed_wait_s: tuple[float, ...]
    """Time each micro-step spent waiting for replicas still in flight."""
    publish_s: float
    """Time spent publishing the host copy at the start of the mini-batch."""
    reduce_s: float
    """Time spent reducing replica and replicated gradients at the end."""
    moves: int
    """Replica moves posted (all ranks)."""


LossFn = Callable[[ForwardOut, int, slice], torch.Tensor]
"""``loss_fn(out, micro_index, rows)``: this rank's share of the loss of one micro-step."""


class Executor:
    """Runs mini-batches of replayed micro-steps on one rank (see the module docstring)."""

    def __init__(
        self,
        model: MoELM,
        layers: Sequence[EPMoELayer],
        store: ReplicaStore,
        engine: TransferEngine | None = None,
        group: ProcessGroup | None = None,
    ) -> None:
        self.model, self.layers, self.store, self.engine, self.group = (
            model,
            layers,
            store,
            engine,
            group,
        )
        self.rank, self.world = layers[0].rank, layers[0].world
        expert_params = {id(p) for layer in layers for p in (layer.w1, layer.w3, layer.w2)}
        self.replicated = [p for p in model.parameters() if id(p) not in expert_params]

    def parameters(self) -> list[torch.nn.Parameter]:
        """What this rank's optimizer steps: home experts plus replicated parameters."""
        return list(self.model.parameters())

    def _install_sync(self, placement: Placement) -> None:
        """Without an engine, fetch replicas synchronously (every rank has the model's homes
        only, so this needs an engine; used for placements without replicas)."""
        needs = replica_needs(placement, lambda layer, e: self.layers[layer].home_rank(e))
        if needs[self.rank]:
            raise InputError("placements with replicas need a TransferEngine")

    def run_minibatch(self, micro_steps: Sequence[MicroStep], loss_fn: LossFn) -> MinibatchStats:
        """Accumulate gradients over ``micro_steps``; see the module docstring. Collective."""
        engine = self.engine
        publish0 = engine.publish_s if engine else 0.0
        moves0 = len(engine.moves) if engine else 0
        if engine is not None:
            engine.begin_minibatch([ms.placement for ms in micro_steps])
            engine.prefetch(micro_steps[0].placement)
        walls: list[float] = []
        waits: list[float] = []
        for m, ms in enumerate(micro_steps):
            if engine is None:
                self._install_sync(ms.placement)
            p = ms.placement
            for i, layer in enumerate(self.layers):
                layer.set_step(
                    p.slot_expert[i], p.slot_filled[i], p.slot_tokens[i], ms.counts[:, i]
                )
            nxt = micro_steps[m + 1].placement if m + 1 < len(micro_steps) else None
            wait0 = self.store.exposed_wait_s
            t0 = time.perf_counter()
            if engine is not None and nxt is not None:
                engine.prefetch(nxt)
            rows = rank_rows(ms.tokens.shape[0], self.world, self.rank)
            dev = self.layers[0].w1.device
            out = self.model(
                ms.tokens[rows].to(dev),
                ms.valid[rows].to(dev),
                RouteMode.REPLAY,
                routes=ms.routes[rows].to(dev),
            )
            loss_fn(out, m, rows).backward()
            walls.append(time.perf_counter() - t0)
            waits.append(self.store.exposed_wait_s - wait0)
            if engine is not None and nxt is not None:
                engine.retire(nxt)
        t0 = time.perf_counter()
        reduce_replica_grads(self.layers, self.store, self.group)
        all_reduce_grads(self.replicated, self.group)
        reduce_s = time.perf_counter() - t0
        return MinibatchStats(
            tuple(walls),
            tuple(waits),
            (engine.publish_s - publish0) if engine else 0.0,
            reduce_s,
            (len(engine.moves) - moves0) if engine else 0,
        )
