"""Cost-aware planning: a replica is kept only where it lowers the busiest GPU's cost."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmsys.core.errors import ConfigError
from llmsys.moe import Placement, ReplicaCost, Topology, home_layout, plan_foremoe, slots_moved
from llmsys.moe.baselines import plan_static
from llmsys.moe.placement import gpu_cost

# 2 GPUs x 3 slots; homes: GPU 0 holds experts 0, 1 (slots 0, 1), GPU 1 holds 2, 3 (3, 4);
# slots 2 and 5 are redundant.
TOPO = Topology(1, 2, 3)
HOMES = home_layout(TOPO, 4, 1)
LOAD = np.array([[60, 50, 40, 40]])  # GPU 0: 110, GPU 1: 80; target 95


def test_gpu_cost_counts_tokens_groups_and_moves() -> None:
    tokens = np.array([[45, 50, 0, 40, 40, 15]])
    moved = np.array([[True, False, True, False, False, True]])
    # GPU 0: 95 tokens + 2 groups (slot 0's move is paid: it computes with moved weights)
    # GPU 1: 95 tokens + 3 groups + 1 move; slot 2 is empty, so its move costs nothing
    out = gpu_cost(tokens, moved, TOPO, ReplicaCost(10.0, 7.0))
    assert out == pytest.approx(np.array([[95 + 20 + 7, 95 + 30 + 7]]))


def test_free_replicas_balance_exactly() -> None:
    for cost in (None, ReplicaCost(0.0)):
        p = plan_foremoe(LOAD, TOPO, homes=HOMES, cost=cost)
        # expert 0 sheds 15 tokens to a replica in GPU 1's redundant slot
        assert p.slot_tokens.tolist() == [[45, 50, 0, 40, 40, 15]]
        assert p.gpu_tokens().tolist() == [[95, 95]]


def test_replica_kept_when_it_pays() -> None:
    # group cost 10: static 110+20 vs 80+20 -> 130; balanced 95+20 vs 95+30 -> 125 < 130
    p = plan_foremoe(LOAD, TOPO, homes=HOMES, cost=ReplicaCost(10.0))
    assert p.slot_tokens.tolist() == [[45, 50, 0, 40, 40, 15]]


@pytest.mark.parametrize("cost", [ReplicaCost(20.0), ReplicaCost(10.0, 10.0)])
def test_replica_given_back_when_it_does_not_pay(cost: ReplicaCost) -> None:
    # group 20: static max 150, balanced 95+40 vs 95+60 -> 155 > 150: homes only
    # group 10 + move 10 (cold start: the replica's weights move): 95+30+10 = 135 > 130
    p = plan_foremoe(LOAD, TOPO, homes=HOMES, cost=cost)
    assert p.slot_tokens.tolist() == [[60, 50, 0, 40, 40, 0]]
    assert not p.slot_filled[0, [2, 5]].any()  # cold start: given-back slots are emptied
    p.check_against(LOAD)


def test_given_back_slot_keeps_its_previous_expert() -> None:
    # micro-step 1: free replicas put expert 0 in slot 5; micro-step 2 is almost balanced
    # (GPU 0: 100, GPU 1: 90), so a replica would cost more than it saves
    first = plan_foremoe(LOAD, TOPO, homes=HOMES)
    assert first.slot_expert[0, 5] == 0 and first.slot_tokens[0, 5] > 0
    second_load = np.array([[55, 45, 45, 45]])
    second = plan_foremoe(second_load, TOPO, first, homes=HOMES, cost=ReplicaCost(20.0))
    assert second.slot_tokens.tolist() == [[55, 45, 0, 45, 45, 0]]
    assert second.slot_filled[0, 5] and second.slot_expert[0, 5] == 0  # nothing moves
    assert slots_moved(first, second).tolist() == [0]


def test_replica_cost_is_validated() -> None:
    with pytest.raises(ConfigError):
        ReplicaCost(-1.0)
    with pytest.raises(ConfigError):
        ReplicaCost(1.0, float("nan"))


@st.composite
def chains(draw: st.DrawFn) -> tuple[Topology, list[np.ndarray], ReplicaCost]:
    gpus = draw(st.integers(2, 4))
    experts = draw(st.integers(gpus, 3 * gpus))
    slots = -(-experts // gpus) + draw(st.integers(1, 3))
    topo = Topology(1, gpus, slots)
    layers = draw(st.integers(1, 3))
    hot = draw(st.floats(1.0, 20.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    loads = []
    for _ in range(3):
        p = np.where(np.arange(experts) < 2, hot, 1.0)
        tokens = draw(st.integers(0, 400))
        loads.append(
            np.stack([rng.multinomial(tokens, p / p.sum()) for _ in range(layers)]).astype(np.int64)
        )
    cost = ReplicaCost(draw(st.floats(0.0, 60.0)), draw(st.floats(0.0, 30.0)))
    return topo, loads, cost


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chain=chains())
def test_cost_aware_plan_never_costs_more_than_static_or_unpruned(
    chain: tuple[Topology, list[np.ndarray], ReplicaCost],
) -> None:
    topo, loads, cost = chain
    homes = home_layout(topo, loads[0].shape[1], loads[0].shape[0])
    prev: Placement = plan_static(loads[0], topo)
    for load in loads:
        aware = plan_foremoe(load, topo, prev, homes=homes, cost=cost)
        free = plan_foremoe(load, topo, prev, homes=homes)
        static = plan_static(load, topo)
        aware.check_against(load)
        busiest = aware.modelled_cost(cost, prev).max(axis=1)
        assert (busiest <= static.modelled_cost(cost, prev).max(axis=1) + 1e-9).all()
        assert (busiest <= free.modelled_cost(cost, prev).max(axis=1) + 1e-9).all()
        # homes never move, and a slot that computes nothing pays no move
        assert (slots_moved(prev, aware) <= slots_moved(prev, free)).all()
        prev = aware
