"""Contract suite: every policy returns a valid placement for random loads and topologies."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmsys.core.errors import InputError
from llmsys.moe import (
    InvalidPlacementError,
    Placement,
    Policy,
    Topology,
    plan,
    rebalance_experts,
    slots_moved,
    solve_milp,
)

FAST = [Policy.FOREMOE, Policy.EPLB, Policy.REACTIVE, Policy.STATIC]

README_WEIGHT = np.array(
    [
        [90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
        [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27],
    ]
)


@st.composite
def instances(draw: st.DrawFn) -> tuple[np.ndarray, Topology]:
    nodes = draw(st.integers(1, 3))
    gpus = draw(st.integers(1, 4))
    slots = draw(st.integers(1, 4))
    topo = Topology(nodes, gpus, slots)
    experts = draw(st.integers(1, topo.num_slots))
    layers = draw(st.integers(1, 3))
    hot = draw(st.booleans())
    high = 10_000 if hot else 50
    flat = draw(
        st.lists(st.integers(0, high), min_size=layers * experts, max_size=layers * experts)
    )
    return np.array(flat, dtype=np.int64).reshape(layers, experts), topo


def assert_valid(p: Placement, load: np.ndarray) -> None:
    # every expert has a slot; tokens conserved exactly; only to slots holding the expert
    p.check_against(load)
    assert (p.replica_counts() >= 1).all()
    assert (p.slot_tokens[~p.slot_filled] == 0).all()
    # no GPU exceeds its slots: the placement has exactly slots_per_gpu per GPU
    per_gpu = p.slot_filled.reshape(p.num_layers, p.topology.num_gpus, -1).sum(-1)
    assert (per_gpu <= p.topology.slots_per_gpu).all()
    assert p.slot_tokens.dtype == np.int64


@pytest.mark.parametrize("policy", FAST, ids=lambda p: p.value)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inst=instances())
def test_policy_returns_valid_placement(policy: Policy, inst: tuple) -> None:
    load, topo = inst
    first = plan(load, topo, policy)
    assert_valid(first, load)
    # and again from a previous placement, with new loads
    second = plan(np.roll(load, 1, axis=1), topo, policy, previous=first)
    assert_valid(second, np.roll(load, 1, axis=1))


@settings(max_examples=25, deadline=None)
@given(
    flat=st.lists(st.integers(0, 200), min_size=6, max_size=6),
    gpus=st.integers(2, 3),
)
def test_no_policy_beats_proven_milp(flat: list[int], gpus: int) -> None:
    load = np.array([flat])
    topo = Topology(1, gpus, 3)
    exact = solve_milp(load, topo, time_limit_s=20)
    assert_valid(exact.placement, load)
    if not exact.proven_optimal:
        return
    for policy in FAST:
        got = plan(load, topo, policy).gpu_tokens().max()
        assert got >= exact.makespan_tokens[0]


def test_milp_reaches_the_mean_when_replicas_allow() -> None:
    # 4 experts, 2 GPUs x 3 slots: 7 + 1 + 1 + 1 = 10 -> two GPUs of 5 each
    load = np.array([[7, 1, 1, 1]])
    exact = solve_milp(load, Topology(1, 2, 3), time_limit_s=20)
    assert exact.proven_optimal
    assert exact.makespan_tokens[0] == 5


def test_eplb_matches_deepseek_readme() -> None:
    # published output of DeepSeek EPLB's README example (hierarchical policy)
    phy2log, _, count = rebalance_experts(README_WEIGHT, 16, 4, 2, 8)
    assert phy2log.tolist() == [
        [5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
        [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1],
    ]
    assert count.sum(axis=1).tolist() == [16, 16]


@pytest.mark.parametrize("policy", [*FAST, Policy.MILP], ids=lambda p: p.value)
def test_readme_example_plans_are_valid(policy: Policy) -> None:
    # 16 replicas on 2 nodes x 4 GPUs = 2 slots per GPU
    topo = Topology(2, 4, 2)
    p = plan(README_WEIGHT, topo, policy, milp_time_limit_s=2.0)
    assert_valid(p, README_WEIGHT)
    if policy is Policy.STATIC:
        assert p.imbalance().max() > 2.0  # contiguous homes: 2.38 on layer 1
    else:
        assert p.imbalance().max() < 1.35


def test_foremoe_balances_a_skewed_layer() -> None:
    # one very hot expert: static leaves GPU 0 with everything, foremoe spreads it
    load = np.array([[800, 10, 10, 10, 10, 10, 10, 10]])
    topo = Topology(2, 2, 3)
    assert plan(load, topo, Policy.STATIC).imbalance()[0] > 3
    assert plan(load, topo, Policy.FOREMOE).imbalance()[0] < 1.05


def test_foremoe_keeps_homes_and_reuses_slots() -> None:
    rng = np.random.default_rng(1)
    load = rng.integers(0, 1000, size=(4, 16))
    topo = Topology(2, 4, 3)
    first = plan(load, topo)
    again = plan(load, topo, previous=first)
    # same load, same live placement: nothing moves
    assert slots_moved(first, again).sum() == 0
    assert (again.slot_tokens == first.slot_tokens).all() or again.imbalance().max() <= (
        first.imbalance().max() + 1e-9
    )


def test_json_round_trip() -> None:
    topo = Topology(2, 4, 2)
    p = plan(README_WEIGHT, topo)
    back = Placement.from_json(p.to_json(), topo, 12)
    assert (back.slot_expert[back.slot_filled] == p.slot_expert[p.slot_filled]).all()
    assert (back.slot_tokens == p.slot_tokens).all()
    assert slots_moved(p, back).sum() == 0


@pytest.mark.parametrize(
    "bad",
    [np.array([[1.0, np.nan]]), np.array([[1, -2]]), np.array([[0.5, 1.0]]), np.ones((2, 2, 2))],
)
def test_bad_loads_raise_input_error(bad: np.ndarray) -> None:
    with pytest.raises(InputError):
        plan(bad, Topology(1, 2, 2))


def test_too_many_experts_raises() -> None:
    with pytest.raises(InputError, match="slots"):
        plan(np.ones((1, 5), dtype=np.int64), Topology(1, 2, 2))


def test_tampered_placement_is_caught() -> None:
    topo = Topology(2, 4, 2)
    p = plan(README_WEIGHT, topo)
    tokens = p.slot_tokens.copy()
    tokens[0, 0] += 1
    bad = Placement(p.policy, topo, 12, p.slot_expert, p.slot_filled, tokens)
    with pytest.raises(InvalidPlacementError, match="routed"):
        bad.check_against(README_WEIGHT)


@settings(max_examples=40, deadline=None)
@given(inst=instances(), foresight=st.booleans())
def test_compiled_packing_matches_numpy_reference(inst: tuple, foresight: bool) -> None:
    from llmsys.moe.planner import balance, pack_homes

    load, topo = inst
    homes = pack_homes(load, topo)
    prev = plan(np.roll(load, 1, axis=1), topo)
    window = np.stack([load[:, ::-1], load]) if foresight else None
    fast = balance(load, homes, prev.slot_expert, prev.slot_filled, window, compiled=True)
    ref = balance(load, homes, prev.slot_expert, prev.slot_filled, window, compiled=False)
    for a, b in zip(fast, ref, strict=True):
        assert (a == b).all()
