"""Pure parts of the executor: the dispatch split, replica needs, and the path choice."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.moe.ep.workers import random_placement

from llmsys.moe.baselines import plan_static
from llmsys.moe.ep.layer import dispatch_matrix
from llmsys.moe.ep.replicas import EventArrival, ReplicaError, ReplicaStore
from llmsys.moe.ep.transfer import LinkModel, TransferPath, plan_moves, replica_needs
from llmsys.moe.placement import InvalidPlacementError
from llmsys.moe.topology import Topology, home_layout


@settings(max_examples=60, deadline=None)
@given(world=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_dispatch_matrix_conserves_tokens(world: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    experts = 6
    topo = Topology(1, world, -(-experts // world) + 2)
    homes = home_layout(topo, experts, 1)
    counts = rng.integers(0, 5, (world, experts))
    placement = random_placement(counts.sum(0)[None], topo, homes, rng)
    send = dispatch_matrix(
        placement.slot_expert[0], placement.slot_filled[0], placement.slot_tokens[0], counts
    )
    # every slot receives exactly its planned tokens, every rank sends exactly its own
    assert (send.sum(axis=0) == placement.slot_tokens[0]).all()
    per_expert = np.zeros((world, experts), dtype=np.int64)
    for s in range(topo.num_slots):
        per_expert[:, placement.slot_expert[0, s]] += send[:, s]
    assert (per_expert == counts).all()
    assert (send >= 0).all()


def test_dispatch_matrix_rejects_a_split_that_loses_tokens() -> None:
    topo = Topology(1, 2, 2)
    counts = np.array([[3, 1], [0, 2]])
    p = plan_static(counts.sum(0)[None], topo)
    tokens = p.slot_tokens[0].copy()
    tokens[0] -= 1
    with pytest.raises(InvalidPlacementError, match="expert 0"):
        dispatch_matrix(p.slot_expert[0], p.slot_filled[0], tokens, counts)


def test_dispatch_keeps_a_ranks_tokens_on_its_own_replica() -> None:
    # expert 1 (home: rank 0, slot 1) has a replica on rank 1 (slot 3) taking 2 tokens
    expert = np.array([0, 1, 2, 1])
    filled = np.ones(4, dtype=bool)
    tokens = np.array([0, 2, 0, 2])
    counts = np.array([[0, 2, 0], [0, 2, 0]])
    send = dispatch_matrix(expert, filled, tokens, counts)
    assert send.tolist() == [[0, 2, 0, 0], [0, 0, 0, 2]]


def _home(layer: int, expert: int) -> int:
    return expert // 2  # 2 ranks x 2 homes


def test_replica_needs_skip_homes_and_empty_slots() -> None:
    topo = Topology(1, 2, 3)
    homes = home_layout(topo, 4, 1)
    p = plan_static(np.array([[4, 4, 4, 4]]), topo)
    expert, filled, tokens = p.slot_expert.copy(), p.slot_filled.copy(), p.slot_tokens.copy()
    # rank 0's redundant slot holds expert 3 with tokens, rank 1's holds expert 2 idle
    expert[0, 2], filled[0, 2], tokens[0, 2], tokens[0, 4] = 3, True, 1, 3
    expert[0, 5], filled[0, 5] = 2, True
    q = type(p)(p.policy, topo, 4, expert, filled, tokens)
    assert replica_needs(q, lambda li, e: int(homes.home_slot()[li, e] // 3)) == [{(0, 3)}, set()]


def test_plan_moves_follows_the_modelled_finish_time() -> None:
    needs = [{(0, 2), (0, 3), (1, 2)}, {(0, 0)}]
    resident: list[set[tuple[int, int]]] = [{(1, 2)}, set()]
    fast, slow = 1e9, 1e3
    direct = plan_moves(needs, resident, _home, 1000, LinkModel(1e-6, fast, 1e-6, slow))
    host = plan_moves(needs, resident, _home, 1000, LinkModel(1e-6, slow, 1e-6, fast))
    assert [(m.layer, m.expert, m.dst_rank) for m in direct] == [(0, 0, 1), (0, 2, 0), (0, 3, 0)]
    assert {m.path for m in direct} == {TransferPath.DIRECT}
    assert {m.path for m in host} == {TransferPath.HOST}
    no_host = plan_moves(needs, resident, _home, 1000, LinkModel(1, slow, 1e-6, fast), False)
    assert {m.path for m in no_host} == {TransferPath.DIRECT}
    # equal paths: the second move into rank 0 finds the direct queue busy and goes via host
    equal = plan_moves(needs, resident, _home, 1000, LinkModel(1e-3, 1e6, 1e-3, 1e6))
    assert [m.path for m in equal] == [TransferPath.DIRECT, TransferPath.DIRECT, TransferPath.HOST]
    assert equal[1].modelled_finish_s == pytest.approx(2e-3)
    assert equal[2].modelled_finish_s == pytest.approx(2e-3)


def test_store_waits_records_and_accumulates() -> None:
    import threading
    import time

    import torch

    store = ReplicaStore(wait_timeout_s=5.0)
    with pytest.raises(ReplicaError, match="never fetched"):
        store.weights((0, 1))
    w = (torch.ones(2, 3), torch.ones(2, 3), torch.ones(3, 2))
    arrival = EventArrival()
    store.expect((0, 1), arrival)
    threading.Timer(0.05, arrival.land, (w,)).start()
    t0 = time.perf_counter()
    leaves = store.weights((0, 1))  # blocks until the timer lands it: exposed wait
    assert 0.0 < store.exposed_wait_s <= time.perf_counter() - t0
    waited = store.exposed_wait_s
    for _ in range(2):  # two micro-steps accumulate into the same buffer
        leaves = store.weights((0, 1))
        sum(x.sum() for x in leaves).backward()
    assert store.exposed_wait_s == waited  # landed copies cost no wait
    grads = store.take_grads()
    assert torch.equal(grads[(0, 1)][0], torch.full((2, 3), 2.0))
    assert store.take_grads() == {}
    late = EventArrival()
    store.expect((0, 2), late)
    store.evict(set())
    late.land(w)  # landed after eviction: into nothing
    assert store.resident() == set()
    never = EventArrival()
    store.expect((0, 3), never)
    store.wait_timeout_s = 0.05
    with pytest.raises(ReplicaError, match="did not land"):
        store.weights((0, 3))
