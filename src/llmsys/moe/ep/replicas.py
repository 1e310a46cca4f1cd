"""Replica weights resident on one rank, and the way their gradients go home.

Protocol
--------
A :class:`ReplicaStore` holds, for each ``(layer, expert)`` this rank computes but does not
home, a copy of the expert's weights ``(w1 [d, f], w3 [d, f], w2 [f, d])``:

* :meth:`ReplicaStore.expect` announces a copy that is on its way as an :class:`Arrival`
  (its completion event: an :class:`EventArrival` another thread lands, or the transfer
  engine's point-to-point receive); :meth:`ReplicaStore.install` puts a copy in place;
* :meth:`ReplicaStore.weights` waits for the arrival (the wait is *exposed* transfer time
  and is added to :attr:`ReplicaStore.exposed_wait_s`), then returns the copy's leaf
  tensors (requiring grad, one set per landed copy, so autograd accumulates their gradient
  across micro-steps as it does a parameter's). When the copy is evicted its gradient is
  banked in a per ``(layer, expert)`` buffer that outlives it, so evicting and re-fetching
  a replica inside a mini-batch loses nothing;
* :meth:`ReplicaStore.evict` drops copies no longer placed; :meth:`ReplicaStore.invalidate`
  drops all of them after the optimizer step (weights are frozen only within a mini-batch).

:func:`reduce_replica_grads` runs once per mini-batch, before the optimizer step: every rank
sends its accumulated replica gradients to the experts' home ranks (all-to-alls of counts,
keys and values); the home adds them to its parameter gradients in source-rank order. Only
home parameters have optimizer state. Gradient accumulation across micro-steps stays local
to the replica (weights do not change under accumulation), so each replica gradient crosses
the network once per mini-batch, not once per micro-step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from llmsys.core.errors import LlmsysError
from llmsys.moe.ep.comm import ProcessGroup

if TYPE_CHECKING:
    from llmsys.moe.ep.layer import EPMoELayer

Key = tuple[int, int]
"""``(layer, expert)``."""
ExpertWeights = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``(w1 [d, f], w3 [d, f], w2 [f, d])``."""


class ReplicaError(LlmsysError, RuntimeError):
    """A replica was needed that was never fetched, or it did not land in time."""


class Arrival:
    """A replica copy on its way: :meth:`wait` returns its weights once landed."""

    def done(self) -> bool:
        """Whether the copy has landed (waiting would not block)."""
        raise NotImplementedError

    def wait(self, timeout_s: float) -> ExpertWeights | None:
        """Block until the copy lands; its weights, or None after ``timeout_s``."""
        raise NotImplementedError


class Landed(Arrival):
    """A copy already in place."""

    def __init__(self, weights: ExpertWeights) -> None:
        self.weights = weights

    def done(self) -> bool:
        return True

    def wait(self, timeout_s: float) -> ExpertWeights | None:
        return self.weights


class EventArrival(Arrival):
    """A copy another thread lands with :meth:`land` (a completion event)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._weights: ExpertWeights | None = None

    def land(self, weights: ExpertWeights) -> None:
        """Store the weights and wake waiters."""
        self._weights = weights
        self._event.set()

    def done(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float) -> ExpertWeights | None:
        return self._weights if self._event.wait(timeout_s) else None


class ReplicaStore:
    """Replica weights on this rank, their arrivals, and their accumulated gradients."""

    def __init__(self, wait_timeout_s: float = 60.0) -> None:
        self.wait_timeout_s = wait_timeout_s
        self.exposed_wait_s = 0.0
        """Seconds spent in :meth:`weights` waiting for copies still in flight."""
        self._arrivals: dict[Key, Arrival] = {}
        # one set of leaves per landed copy: autograd accumulates its gradient across
        # micro-steps like a parameter's; banked into _grads when the copy goes
        self._leaves: dict[Key, tuple[Arrival, ExpertWeights]] = {}
        self._grads: dict[Key, list[torch.Tensor | None]] = {}
        self._lock = threading.Lock()

    # -- residency ----------------------------------------------------------------------
    def expect(self, key: Key, arrival: Arrival) -> None:
        """Announce a copy in flight (it replaces any copy of ``key`` held before)."""
        with self._lock:
            self._arrivals[key] = arrival

    def install(self, key: Key, weights: ExpertWeights) -> None:
        """Put a copy in place at once (tests, synchronous fetches)."""
        self.expect(key, Landed(weights))

    def resident(self) -> set[Key]:
        """Keys present or in flight."""
        with self._lock:
            return set(self._arrivals)

    def evict(self, keep: set[Key]) -> None:
        """Drop every copy whose key is not in ``keep`` (gradients are kept; a copy still
        in flight lands into nothing)."""
        with self._lock:
            for key in [k for k in self._arrivals if k not in keep]:
                del self._arrivals[key]
                self._bank(key)

    def invalidate(self) -> None:
        """Drop all copies: the home weights have changed (after an optimizer step)."""
        self.evict(set())

    # -- use ----------------------------------------------------------------------------
    def weights(self, key: Key) -> ExpertWeights:
        """Leaf copies (requiring grad) of a replica, once it has landed.

        Raises:
            ReplicaError: the replica was never announced, or it did not land within
                ``wait_timeout_s``.
        """
        with self._lock:
            arrival = self._arrivals.get(key)
        if arrival is None:
            raise ReplicaError(f"layer {key[0]} expert {key[1]}: replica needed but never fetched")
        if arrival.done():
            stored = arrival.wait(0.0)
        else:
            t0 = time.perf_counter()
            stored = arrival.wait(self.wait_timeout_s)
            self.exposed_wait_s += time.perf_counter() - t0
        if stored is None:
            raise ReplicaError(
                f"layer {key[0]} expert {key[1]}: replica did not land within "
                f"{self.wait_timeout_s:g} s"
            )
        leaves = self._leaves.get(key)
        if leaves is None or leaves[0] is not arrival:
            self._bank(key)
            made = tuple(w.detach().requires_grad_(True) for w in stored)
            leaves = (arrival, (made[0], made[1], made[2]))
            self._leaves[key] = leaves
        return leaves[1]

    def _bank(self, key: Key) -> None:
        """Move the gradients a copy's leaves accumulated into the per-key buffer."""
        held = self._leaves.pop(key, None)
        if held is None or held[1][0].grad is None:
            return
        acc = self._grads.setdefault(key, [None, None, None])
        for i, leaf in enumerate(held[1]):
            g = leaf.grad
            if g is not None:
                prev = acc[i]
                acc[i] = g if prev is None else prev + g
                leaf.grad = None

    def take_grads(self) -> dict[Key, ExpertWeights]:
        """Remove and return the accumulated replica gradients.

        A replica is only ever computed with tokens, and an expert uses all three of its
        matrices, so each key holds all three gradients.
        """
        for key in list(self._leaves):
            self._bank(key)
        out: dict[Key, ExpertWeights] = {}
        for key, (g1, g3, g2) in self._grads.items():
            assert g1 is not None and g3 is not None and g2 is not None
            out[key] = (g1, g3, g2)
        self._grads = {}
        return out


def reduce_replica_grads(
    layers: Sequence[EPMoELayer], store: ReplicaStore, group: ProcessGroup | None = None
) -> int:
    """Send accumulated replica gradients home and add them to the home parameter grads.

    Collective: every rank of the group calls it once per mini-batch, before the optimizer
    step. Returns the number of replica gradients this rank received.
    """
    world = dist.get_world_size(group)
    grads = store.take_grads()
    by_dest: list[list[Key]] = [[] for _ in range(world)]
    for key in sorted(grads):
        by_dest[layers[key[0]].home_rank(key[1])].append(key)
    dev = layers[0].w1.device  # NCCL exchanges device tensors
    n_send = torch.tensor([len(k) for k in by_dest], dtype=torch.int64, device=dev)
    n_recv = torch.empty_like(n_send)
    dist.all_to_all_single(n_recv, n_send, group=group)
    flat_keys = [k for dest in by_dest for k in dest]
    keys_out = torch.tensor(flat_keys, dtype=torch.int64, device=dev).reshape(-1, 2)
    keys_in = torch.empty((int(n_recv.sum()), 2), dtype=torch.int64, device=dev)
    dist.all_to_all_single(keys_in, keys_out, n_recv.tolist(), n_send.tolist(), group=group)
    dtype = layers[0].w1.dtype
    per = layers[0].expert_numel
    flat_out = [torch.cat([g.reshape(-1) for g in grads[k]]) for dest in by_dest for k in dest]
    vals_out = torch.cat(flat_out) if flat_out else torch.zeros(0, dtype=dtype, device=dev)
    vals_in = torch.empty(int(n_recv.sum()) * per, dtype=dtype, device=dev)
    dist.all_to_all_single(
        vals_in, vals_out, (n_recv * per).tolist(), (n_send * per).tolist(), group=group
    )
    for i, (layer, expert) in enumerate(keys_in.tolist()):
        layers[layer].add_home_grad(expert, vals_in[i * per : (i + 1) * per])
    return int(n_recv.sum())
