"""Baseline policies in the same code paths as ForeMoE: static, EPLB, reactive.

Protocol: each ``plan_*`` function maps a load ``[layers, experts]`` and a topology to a
:class:`~llmsys.moe.placement.Placement`, exactly like :func:`~llmsys.moe.planner.plan_foremoe`.

* ``static``: plain expert parallelism. Experts live in contiguous blocks, every token goes
  to the home slot, redundant slots stay empty.
* ``eplb``: DeepSeek's Expert Parallelism Load Balancer, written from its published
  description. :func:`rebalance_experts` returns ``phy2log`` (the logical expert in each
  physical slot, glossary: physical-to-logical), ``phy_rank`` (replica index) and
  ``log_count`` (replicas per expert). Greedy replication gives the next replica to the
  expert with the largest load per replica; balanced packing assigns items, heaviest first,
  to the lightest pack that still has room (every pack gets the same number of items). With
  ``num_groups`` divisible by ``num_nodes`` it is hierarchical: groups are packed onto nodes,
  experts replicated within each node, then packed onto the node's GPUs; otherwise one
  global pass. Tokens of an expert are split evenly across its replicas (what the serving
  stacks' random replica choice gives in expectation). It ignores where experts are now.
* ``reactive``: Megatron/MoonEP-style per-micro-batch redundant experts. Homes are packed
  from past steps (as strong as EPLB's), and every micro-step the redundant slots are
  re-planned from that micro-step's router output with ForeMoE's balancing core, but with
  no foresight and no regard for what is already loaded, so its weight moves cannot be
  prefetched (the simulator charges them on the critical path).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from llmsys.core.errors import ConfigError, InputError
from llmsys.moe.placement import Placement, Policy
from llmsys.moe.planner import balance, check_load, layout_of, pack_homes
from llmsys.moe.topology import HomeLayout, Topology, home_layout

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def plan_static(load: npt.ArrayLike, topology: Topology) -> Placement:
    """Home slots only; every expert's tokens go to its single home slot."""
    arr = check_load(load, topology)
    layers, experts = arr.shape
    layout = home_layout(topology, experts, layers)
    home = layout.home_slot()
    slot_expert = np.zeros((layers, topology.num_slots), dtype=np.int64)
    slot_filled = np.zeros_like(slot_expert, dtype=bool)
    slot_tokens = np.zeros_like(slot_expert)
    np.put_along_axis(slot_expert, home, np.broadcast_to(np.arange(experts), arr.shape), axis=1)
    np.put_along_axis(slot_filled, home, True, axis=1)
    np.put_along_axis(slot_tokens, home, arr, axis=1)
    return Placement(Policy.STATIC, topology, experts, slot_expert, slot_filled, slot_tokens)


def balanced_packing(weight: FloatArray, num_packs: int) -> tuple[IntArray, IntArray]:
    """Pack ``n`` items per row into ``num_packs`` packs of ``n / num_packs`` items each.

    Args:
        weight: ``[rows, n]`` item weights.
        num_packs: packs per row; must divide ``n``.

    Returns:
        ``pack`` and ``rank_in_pack``, both ``[rows, n]``.
    """
    rows, n = weight.shape
    if n % num_packs:
        raise ConfigError(f"{n} items do not split evenly into {num_packs} packs")
    per_pack = n // num_packs
    pack = np.zeros((rows, n), dtype=np.int64)
    rank = np.zeros((rows, n), dtype=np.int64)
    order = np.argsort(-weight, axis=1, kind="stable")
    r = np.arange(rows)
    pack_weight = np.zeros((rows, num_packs))
    pack_items = np.zeros((rows, num_packs), dtype=np.int64)
    for j in range(n):
        item = order[:, j]
        chosen = np.where(pack_items < per_pack, pack_weight, np.inf).argmin(axis=1)
        pack[r, item] = chosen
        rank[r, item] = pack_items[r, chosen]
        pack_weight[r, chosen] += weight[r, item]
        pack_items[r, chosen] += 1
    return pack, rank


def replicate_experts(weight: FloatArray, num_physical: int) -> tuple[IntArray, IntArray, IntArray]:
    """Greedy replication: each extra slot goes to the expert with the most load per replica.

    Returns:
        ``phy2log`` ``[rows, num_physical]``, ``phy_rank`` ``[rows, num_physical]`` and
        ``log_count`` ``[rows, n]``.
    """
    rows, n = weight.shape
    phy2log = np.broadcast_to(np.arange(num_physical) % max(n, 1), (rows, num_physical)).copy()
    phy_rank = np.zeros((rows, num_physical), dtype=np.int64)
    log_count = np.ones((rows, n), dtype=np.int64)
    r = np.arange(rows)
    for i in range(n, num_physical):
        hot = (weight / log_count).argmax(axis=1)
        phy2log[:, i] = hot
        phy_rank[:, i] = log_count[r, hot]
        log_count[r, hot] += 1
    return phy2log, phy_rank, log_count


def _inverse(perm: IntArray) -> IntArray:
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.broadcast_to(np.arange(perm.shape[1]), perm.shape), axis=1)
    return inv


def rebalance_experts(
    weight: npt.ArrayLike, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[IntArray, IntArray, IntArray]:
    """DeepSeek EPLB: replicate and place experts for ``weight`` ``[layers, experts]``.

    Returns:
        ``phy2log`` ``[layers, num_replicas]`` (logical expert in each physical slot,
        GPU-major), ``phy_rank`` ``[layers, num_replicas]`` and ``log_count``
        ``[layers, experts]``.

    Raises:
        ConfigError: the counts do not divide as the algorithm needs.
    """
    w = np.asarray(weight, dtype=np.float64)
    layers, experts = w.shape
    if num_groups % num_nodes:  # global policy: one group, one node
        num_groups, num_nodes = 1, 1
    if experts % num_groups or num_replicas % num_gpus or num_gpus % num_nodes:
        raise ConfigError("EPLB needs groups | experts, GPUs | replicas and nodes | GPUs")
    if num_replicas < experts:
        raise ConfigError(f"{num_replicas} replicas cannot hold {experts} experts")
    group_size = experts // num_groups
    groups_per_node = num_groups // num_nodes
    per_gpu = num_replicas // num_gpus
    # 1. pack groups onto nodes
    group_load = w.reshape(layers, num_groups, group_size).sum(-1)
    group_pack, group_rank = balanced_packing(group_load, num_nodes)
    first = (group_pack * groups_per_node + group_rank) * group_size
    log2mlog = (first[:, :, None] + np.arange(group_size)).reshape(layers, experts)
    mlog2log = _inverse(log2mlog)
    # 2. replicate within each node
    mlog_load = np.take_along_axis(w, mlog2log, axis=1).reshape(-1, experts // num_nodes)
    phy2mlog, phy_rank, mlog_count = replicate_experts(mlog_load, num_replicas // num_nodes)
    # 3. pack physical experts onto the node's GPUs
    phy_load = np.take_along_axis(mlog_load / mlog_count, phy2mlog, axis=1)
    pack, rank = balanced_packing(phy_load, num_gpus // num_nodes)
    pphy2phy = _inverse(pack * per_gpu + rank)
    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, axis=1)
    offset = np.arange(num_nodes)[None, :, None] * (experts // num_nodes)
    pphy2mlog = (pphy2mlog.reshape(layers, num_nodes, -1) + offset).reshape(layers, -1)
    phy2log = np.take_along_axis(mlog2log, pphy2mlog, axis=1)
    pphy_rank = np.take_along_axis(phy_rank, pphy2phy, axis=1).reshape(layers, -1)
    log_count = np.take_along_axis(mlog_count.reshape(layers, -1), log2mlog, axis=1)
    return phy2log, pphy_rank, log_count


def split_even(
    load: IntArray, phy2log: IntArray, phy_rank: IntArray, log_count: IntArray
) -> IntArray:
    """``[layers, slots]`` integer tokens per slot: each expert's load split evenly.

    Replica ``r`` of an expert with ``c`` replicas and ``w`` tokens takes
    ``w // c + (r < w % c)``, so the split is exact.
    """
    w = np.take_along_axis(load, phy2log, axis=1)
    c = np.take_along_axis(log_count, phy2log, axis=1)
    return w // c + (phy_rank < w % c)


def plan_eplb(
    load: npt.ArrayLike,
    topology: Topology,
    planning_load: npt.ArrayLike | None = None,
    num_groups: int = 1,
) -> Placement:
    """Place with EPLB planned from ``planning_load`` (default: ``load``); serve ``load``.

    ``planning_load`` is the moving average of past steps when EPLB runs step-level.
    """
    arr = check_load(load, topology)
    plan_w = arr if planning_load is None else np.asarray(planning_load, dtype=np.float64)
    phy2log, rank, count = rebalance_experts(
        plan_w, topology.num_slots, num_groups, topology.num_nodes, topology.num_gpus
    )
    tokens = split_even(arr, phy2log, rank, count)
    filled = np.ones_like(phy2log, dtype=bool)
    return Placement(Policy.EPLB, topology, arr.shape[1], phy2log, filled, tokens)


def serve_eplb(load: npt.ArrayLike, plan: Placement) -> Placement:
    """Serve ``load`` with an EPLB placement planned earlier: same slots, even split.

    Raises:
        InputError: bad load, or an expert of ``load`` has no slot in ``plan``.
    """
    arr = check_load(load, plan.topology)
    counts = plan.replica_counts()
    if arr.shape != counts.shape or (counts == 0).any():
        raise InputError("the EPLB placement does not cover every expert of this load")
    phy2log = plan.slot_expert
    # replica index of each slot: how many earlier slots hold the same expert
    order = np.argsort(phy2log, axis=1, kind="stable")
    sorted_e = np.take_along_axis(phy2log, order, axis=1)
    first = np.take_along_axis(np.cumsum(counts, axis=1) - counts, sorted_e, axis=1)
    rank = np.empty_like(phy2log)
    np.put_along_axis(rank, order, np.arange(phy2log.shape[1])[None, :] - first, axis=1)
    tokens = split_even(arr, phy2log, rank, counts)
    return Placement(Policy.EPLB, plan.topology, arr.shape[1], phy2log, plan.slot_filled, tokens)


def plan_reactive(
    load: npt.ArrayLike,
    topology: Topology,
    previous: Placement | None = None,
    homes: HomeLayout | None = None,
) -> Placement:
    """Re-plan the redundant slots from this micro-step's loads only (no foresight).

    Homes come from ``homes``, else from ``previous`` (when its home slots hold every
    expert once), else they are packed from ``load``. ``previous`` is not used to keep
    replicas in place: the reactive planner does not look at what is already loaded.
    """
    arr = check_load(load, topology)
    if homes is None and previous is not None and previous.num_experts == arr.shape[1]:
        homes = layout_of(previous)
    if homes is None or homes.num_layers != arr.shape[0]:
        homes = pack_homes(arr, topology)
    expert, filled, tokens = balance(arr, homes, None, None, None)
    return Placement(Policy.REACTIVE, topology, arr.shape[1], expert, filled, tokens)
