"""The expert-parallel MoE layer: a placement executed across ranks.

Protocol
--------
Rank ``r`` of an expert-parallel group of ``G`` ranks (one per GPU of the
:class:`~llmsys.moe.topology.Topology`) holds its own tokens (data parallel over
sequences), a replicated router, and the weights of its *home* experts (from a
:class:`~llmsys.moe.topology.HomeLayout`) as parameters - the only copies with optimizer
state. Before each micro-step the caller gives every layer the micro-step's placement row
and the token counts ``counts [G, E]`` (valid tokens each rank routes to each expert; under
router replay they are known in advance, otherwise the layer all-gathers them):
:meth:`EPMoELayer.set_step`.

A forward then runs, for the valid tokens only (padding is never attended to nor a
target, so its output is left zero):

1. **route** with the live router (replayed routes gather live scores, as in
   :class:`~llmsys.moe.lm.model.MoELayer`);
2. **split**: expert ``e``'s tokens, laid end to end in rank order, are cut into the
   consecutive amounts its slots compute (``slot_tokens``, slots in index order - so both
   sides run in rank order and a rank's tokens tend to stay on its own replica):
   :func:`dispatch_matrix` gives ``send [G, num_slots]``, identical on every rank;
3. **dispatch**: one uneven all-to-all sends each (token, expert) row to its slot's rank,
   grouped by slot;
4. **compute** each local slot's expert - home parameters, or replica weights from the
   :class:`~llmsys.moe.ep.replicas.ReplicaStore` (which waits for a copy in flight); the
   local slots of one expert (two replicas, or a replica beside its home) run as one
   group, one pass, since a pass has a fixed cost whatever its rows;
5. **combine**: the reverse all-to-all brings the rows back; the sender scales them by the
   combine weights and sums them per token.

Autograd runs through all of it (:func:`~llmsys.moe.ep.comm.all_to_all`). Gradients of home
experts accumulate in the parameters; replica gradients accumulate in the store and go home
in :func:`~llmsys.moe.ep.replicas.reduce_replica_grads`; the router's gradient is a data
parallel partial sum (all-reduce it with :func:`~llmsys.moe.ep.comm.all_reduce_grads`). The
auxiliary balancing loss uses the global counts, so the ranks' losses sum to the
single-process loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
from torch import nn

from llmsys.core.errors import ConfigError, InputError
from llmsys.moe.ep.comm import ProcessGroup, all_to_all
from llmsys.moe.ep.replicas import ReplicaStore
from llmsys.moe.lm.config import Balance, MoEConfig
from llmsys.moe.lm.model import MoELayer, expert_forward, route_tokens
from llmsys.moe.placement import InvalidPlacementError
from llmsys.moe.topology import HomeLayout

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def dispatch_matrix(
    slot_expert: IntArray, slot_filled: BoolArray, slot_tokens: IntArray, counts: IntArray
) -> IntArray:
    """``send [G, num_slots]``: valid tokens rank ``g`` sends to each slot, for one layer.

    Args:
        slot_expert: ``[num_slots]`` expert in each slot.
        slot_filled: ``[num_slots]`` whether the slot holds an expert.
        slot_tokens: ``[num_slots]`` tokens each slot computes.
        counts: ``[G, E]`` tokens each rank routes to each expert.

    Raises:
        InvalidPlacementError: an expert's slots do not compute exactly its tokens.
    """
    num_experts = counts.shape[1]
    tokens = np.where(slot_filled, slot_tokens, 0)
    served = np.bincount(slot_expert[slot_filled], tokens[slot_filled], minlength=num_experts)
    routed = counts.sum(axis=0)
    if served.shape[0] != num_experts or (served.astype(np.int64) != routed).any():
        bad = int(np.flatnonzero(served[:num_experts].astype(np.int64) != routed)[0])
        raise InvalidPlacementError(
            f"expert {bad}: ranks route {routed[bad]} tokens, its slots compute {int(served[bad])}"
        )
    hi_slot, lo_slot = _slot_intervals(slot_expert, slot_filled, tokens)
    hi_src = np.cumsum(counts, axis=0)  # [G, E]
    lo_src = hi_src - counts
    e = np.where(slot_filled, slot_expert, 0)
    overlap = np.minimum(hi_src[:, e], hi_slot[None, :]) - np.maximum(
        lo_src[:, e], lo_slot[None, :]
    )
    out: IntArray = np.where(slot_filled[None, :], np.maximum(overlap, 0), 0).astype(np.int64)
    return out


def _slot_intervals(
    slot_expert: IntArray, slot_filled: BoolArray, tokens: IntArray
) -> tuple[IntArray, IntArray]:
    """Each slot's ``[lo, hi)`` within its expert's tokens (slots of an expert in index order)."""
    key = np.where(slot_filled, slot_expert, -1)
    order = np.lexsort((np.arange(key.size), key))
    t = tokens[order]
    cum = np.cumsum(t)
    k = key[order]
    first = np.r_[True, k[1:] != k[:-1]]
    base = np.maximum.accumulate(np.where(first, cum - t, 0))
    hi = np.empty_like(cum)
    hi[order] = cum - base
    return hi, hi - tokens


@dataclass(slots=True)
class _Step:
    """One layer's share of a micro-step's placement."""

    slot_expert: IntArray
    slot_filled: BoolArray
    slot_tokens: IntArray
    counts: IntArray | None
    send: IntArray | None = field(default=None)


class EPMoELayer(nn.Module):
    """Router plus this rank's home experts; executes placements across the group.

    Raises:
        ConfigError: the model has a shared expert (not supported here), or the home
            layout's GPU count differs from the group size.
    """

    def __init__(
        self,
        cfg: MoEConfig,
        layer_index: int,
        homes: HomeLayout,
        rank: int,
        store: ReplicaStore,
        group: ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        if cfg.shared_expert:
            raise ConfigError("the expert-parallel layer does not run a shared expert")
        if homes.num_experts != cfg.num_experts or not 0 <= rank < homes.topology.num_gpus:
            raise ConfigError("home layout does not match the model or the rank")
        e, d, f = cfg.num_experts, cfg.hidden, cfg.expert_ffn
        self.cfg, self.layer_index, self.rank, self.group, self.store = (
            cfg,
            layer_index,
            rank,
            group,
            store,
        )
        self.homes = homes
        self.world = homes.topology.num_gpus
        self.slots_per_rank = homes.topology.slots_per_gpu
        mine = homes.home_table[layer_index, rank][homes.home_valid[rank]]
        self.home_experts: tuple[int, ...] = tuple(int(x) for x in mine)
        self._home_index = {x: i for i, x in enumerate(self.home_experts)}
        self._home_slot = homes.home_slot()[layer_index]  # [E]
        self._home_rank = self._home_slot // self.slots_per_rank
        n = len(self.home_experts)
        self.router = nn.Linear(d, e, bias=False)
        self.w1 = nn.Parameter(torch.randn(n, d, f) / math.sqrt(d))
        self.w3 = nn.Parameter(torch.randn(n, d, f) / math.sqrt(d))
        self.w2 = nn.Parameter(torch.randn(n, f, d) / math.sqrt(f))
        self.expert_numel = 3 * d * f
        self._step: _Step | None = None

    @classmethod
    def from_reference(
        cls,
        ref: MoELayer,
        layer_index: int,
        homes: HomeLayout,
        rank: int,
        store: ReplicaStore,
        group: ProcessGroup | None = None,
    ) -> EPMoELayer:
        """This rank's part of a single-process layer: its router and home experts' weights."""
        layer = cls(ref.cfg, layer_index, homes, rank, store, group).to(ref.w1.dtype)
        idx = torch.tensor(layer.home_experts, dtype=torch.long, device=ref.w1.device)
        with torch.no_grad():
            layer.router.weight.copy_(ref.router.weight)
            for name in ("w1", "w3", "w2"):
                getattr(layer, name).copy_(getattr(ref, name)[idx])
        return layer

    # -- homes --------------------------------------------------------------------------
    def home_rank(self, expert: int) -> int:
        """Rank holding ``expert``'s parameters in this layer."""
        return int(self._home_rank[expert])

    def home_weights(self, expert: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Detached views of a home expert's ``(w1, w3, w2)`` (what a transfer sends)."""
        i = self._home_index[expert]
        return self.w1.detach()[i], self.w3.detach()[i], self.w2.detach()[i]

    def add_home_grad(self, expert: int, flat: torch.Tensor) -> None:
        """Add a replica's flattened ``(w1, w3, w2)`` gradient to a home expert's grads."""
        i = self._home_index[expert]
        offset = 0
        for p in (self.w1, self.w3, self.w2):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            size = p[i].numel()
            p.grad[i] += flat[offset : offset + size].view_as(p[i])
            offset += size

    # -- plan ---------------------------------------------------------------------------
    def set_step(
        self,
        slot_expert: IntArray,
        slot_filled: BoolArray,
        slot_tokens: IntArray,
        counts: IntArray | None = None,
    ) -> None:
        """Set the next forward's placement row (``[num_slots]`` each) and ``counts [G, E]``.

        Raises:
            InvalidPlacementError: a home slot does not hold its home expert, the arrays do
                not fit the topology, or the split does not match ``counts``.
        """
        num_slots = self.world * self.slots_per_rank
        for a in (slot_expert, slot_filled, slot_tokens):
            if a.shape != (num_slots,):
                raise InvalidPlacementError(f"placement rows must be [{num_slots}]")
        home = self._home_slot
        if not (
            slot_filled[home].all() and (slot_expert[home] == np.arange(self.cfg.num_experts)).all()
        ):
            raise InvalidPlacementError(
                f"layer {self.layer_index}: home slots must hold their home experts"
            )
        step = _Step(
            slot_expert.astype(np.int64),
            slot_filled.astype(bool),
            slot_tokens.astype(np.int64),
            None,
        )
        if counts is not None:
            if counts.shape != (self.world, self.cfg.num_experts):
                raise InputError(f"counts must be [{self.world}, {self.cfg.num_experts}]")
            step.counts = counts.astype(np.int64)
            step.send = dispatch_matrix(
                step.slot_expert, step.slot_filled, step.slot_tokens, step.counts
            )
        self._step = step

    def needed_replicas(self) -> set[int]:
        """Experts this rank computes in the set step without homing them."""
        if self._step is None:
            return set()
        s = self._step
        lo = self.rank * self.slots_per_rank
        mine = slice(lo, lo + self.slots_per_rank)
        used = s.slot_filled[mine] & (s.slot_tokens[mine] > 0)
        return {int(e) for e in s.slot_expert[mine][used] if int(e) not in self._home_index}

    # -- forward ------------------------------------------------------------------------
    def route(
        self, x: torch.Tensor, routes: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(probs [n, E], routes [n, k], combine weights [n, k])``, as the reference."""
        return route_tokens(self.router, x, routes, self.cfg.top_k)

    def forward(
        self, x: torch.Tensor, routes: torch.Tensor | None, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run this rank's tokens ``x [n, d]``; returns ``(y, routes, aux_loss)``.

        Collective: every rank of the group calls it for the same layer and micro-step.

        Raises:
            InvalidPlacementError: no step was set, or the placement does not serve the
                routed tokens.
        """
        if self._step is None:
            raise InvalidPlacementError(f"layer {self.layer_index}: set_step before forward")
        step, k, num_e = self._step, self.cfg.top_k, self.cfg.num_experts
        probs, routes, weights = self.route(x, routes)
        vidx = valid.nonzero().squeeze(1)
        flat_e = routes[vidx].reshape(-1)
        tok = vidx.repeat_interleave(k)
        local = torch.bincount(flat_e, minlength=num_e).cpu().numpy().astype(np.int64)
        if step.counts is None:
            # NCCL gathers device tensors, gloo host ones: keep them where x lives
            mine = torch.from_numpy(local).to(x.device)
            gathered = [torch.zeros_like(mine) for _ in range(self.world)]
            dist.all_gather(gathered, mine, group=self.group)
            step.counts = torch.stack(gathered).cpu().numpy()
            step.send = dispatch_matrix(
                step.slot_expert, step.slot_filled, step.slot_tokens, step.counts
            )
        elif not np.array_equal(step.counts[self.rank], local):
            raise InvalidPlacementError(
                f"layer {self.layer_index}: rank {self.rank} routes other counts than planned"
            )
        assert step.send is not None
        perm, in_splits, out_splits, recv_order, local_slots = self._layout(
            flat_e.cpu().numpy(), step
        )
        perm_t = torch.from_numpy(perm).to(x.device)
        recv = all_to_all(x[tok[perm_t]], in_splits, out_splits, self.group)
        outs = self._compute(recv, recv_order, local_slots, step)
        back = all_to_all(outs, out_splits, in_splits, self.group)
        contrib = back * weights[vidx].reshape(-1)[perm_t].unsqueeze(-1)
        y = torch.zeros_like(x).index_add(0, tok[perm_t], contrib)
        return y, routes, self._aux(probs, valid, step.counts)

    def _layout(
        self, flat_e: IntArray, step: _Step
    ) -> tuple[IntArray, list[int], list[int], IntArray, list[tuple[int, int]]]:
        """Slot of every local (token, expert) row, the send order, splits, receive order."""
        assert step.send is not None and step.counts is not None
        spr, rank = self.slots_per_rank, self.rank
        tokens = np.where(step.slot_filled, step.slot_tokens, 0)
        hi, _ = _slot_intervals(step.slot_expert, step.slot_filled, tokens)
        # global position of each row inside its expert's tokens
        order = np.argsort(flat_e, kind="stable")
        sorted_e = flat_e[order]
        start = np.searchsorted(sorted_e, np.arange(self.cfg.num_experts))
        within = np.empty_like(flat_e)
        within[order] = np.arange(flat_e.size) - start[sorted_e]
        lo_src = np.cumsum(step.counts, axis=0)[rank] - step.counts[rank]
        pos = lo_src[flat_e] + within
        # the slot whose [lo, hi) holds pos: search (expert, hi) in lexicographic order
        cand = np.flatnonzero(step.slot_filled & (tokens > 0))
        cand = cand[np.lexsort((cand, step.slot_expert[cand]))]
        key_slot = step.slot_expert[cand] * (1 << 32) + hi[cand]
        slot = cand[np.searchsorted(key_slot, flat_e * (1 << 32) + pos, side="right")]
        perm = np.argsort(slot, kind="stable")
        in_splits = np.bincount(slot // spr, minlength=self.world).tolist()
        block = step.send[:, rank * spr : (rank + 1) * spr]  # [G, spr] rows from each source
        out_splits = block.sum(axis=1).tolist()
        starts = (np.cumsum(block.ravel()) - block.ravel()).reshape(block.shape)
        parts: list[IntArray] = []
        local_slots: list[tuple[int, int]] = []
        # slots of one expert side by side, so _compute runs them in one pass
        busy = [s for s in range(spr) if block[:, s].any()]
        busy.sort(key=lambda s: (int(step.slot_expert[rank * spr + s]), s))
        for s in busy:
            local_slots.append((rank * spr + s, int(block[:, s].sum())))
            parts.extend(
                np.arange(starts[g, s], starts[g, s] + block[g, s]) for g in range(self.world)
            )
        recv_order = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return perm, in_splits, out_splits, recv_order.astype(np.int64), local_slots

    def _compute(
        self,
        recv: torch.Tensor,
        recv_order: IntArray,
        local_slots: list[tuple[int, int]],
        step: _Step,
    ) -> torch.Tensor:
        """Expert outputs for the received rows, in receive order."""
        if not local_slots:
            return recv.new_zeros((0, self.cfg.hidden)) + recv.sum() * 0
        order_t = torch.from_numpy(recv_order).to(recv.device)
        grouped = recv[order_t]
        w1s, w3s, w2s = self.w1.unbind(0), self.w3.unbind(0), self.w2.unbind(0)
        # one pass per expert: its slots here (home and replicas, or two replicas) are
        # adjacent in receive order (see _layout) and share one set of weights
        runs: list[tuple[int, int]] = []
        for slot, n in local_slots:
            e = int(step.slot_expert[slot])
            if runs and runs[-1][0] == e:
                runs[-1] = (e, runs[-1][1] + n)
            else:
                runs.append((e, n))
        outs: list[torch.Tensor] = []
        offset = 0
        for e, n in runs:
            i = self._home_index.get(e)
            if i is not None:
                w = (w1s[i], w3s[i], w2s[i])
            else:
                w = self.store.weights((self.layer_index, e))
            outs.append(expert_forward(grouped[offset : offset + n], *w))
            offset += n
        out_sorted = torch.cat(outs)
        inverse = torch.empty_like(order_t)
        inverse[order_t] = torch.arange(order_t.numel(), device=recv.device)
        return out_sorted[inverse]

    def _aux(self, probs: torch.Tensor, valid: torch.Tensor, counts: IntArray) -> torch.Tensor:
        """This rank's share of the balancing loss; the shares sum to the global loss."""
        cfg = self.cfg
        total = int(counts.sum())
        if cfg.balance is not Balance.AUX_LOSS or not self.training or total == 0:
            return probs.new_zeros(())
        n_valid = total / cfg.top_k
        share = torch.from_numpy(counts.sum(axis=0)).to(probs.device, probs.dtype) / total
        local_prob = (probs * valid.to(probs.dtype).unsqueeze(-1)).sum(0) / n_valid
        return cfg.num_experts * (share * local_prob).sum()
