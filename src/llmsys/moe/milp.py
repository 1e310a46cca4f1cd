"""Exact placement by mixed-integer programming (HiGHS), for small instances.

Protocol: :func:`solve_milp` takes one layer's load, the topology and the previous
placement of that layer, and returns a :class:`MilpSolution` with a placement and whether
HiGHS proved it optimal. Two lexicographic stages:

1. minimise ``M``, the largest GPU token count, over ``y[e, g]`` (expert ``e`` has a
   replica on GPU ``g``, binary) and ``t[e, g]`` (its integer tokens there), subject to
   ``t <= w_e y``, ``sum_g t[e, g] = w_e``, ``sum_g y[e, g] >= 1``,
   ``sum_e y[e, g] <= slots_per_gpu``, ``sum_e t[e, g] <= M``;
2. with ``M`` fixed at its optimum, minimise the replicas placed on a GPU that did not hold
   that expert before (each is one slot whose weights must move).

Slots on a GPU are interchangeable, so the model works per GPU and the slot order is
recovered afterwards (experts that stay keep their slot). Gaps reported against this
solver are measured only where ``proven_optimal`` is true.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from llmsys.core.errors import LlmsysError
from llmsys.moe.placement import Placement, Policy
from llmsys.moe.planner import check_load
from llmsys.moe.topology import Topology, home_layout

IntArray = npt.NDArray[np.int64]


class SolverError(LlmsysError):
    """HiGHS found no feasible placement within its time limit."""


@dataclass(frozen=True, slots=True)
class MilpSolution:
    """Result of :func:`solve_milp`."""

    placement: Placement
    """The placement found (one layer per input layer)."""
    makespan_tokens: IntArray
    """``[layers]`` largest GPU token count of the placement."""
    proven_optimal: bool
    """True when HiGHS proved stage 1 (the makespan) optimal for every layer."""


@contextlib.contextmanager
def _stdout_silenced() -> Iterator[None]:
    """Silence file descriptor 1: highspy prints a banner when the first solver is built."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _solve_layer(
    w: IntArray, topology: Topology, prev_on_gpu: list[set[int]], time_limit_s: float
) -> tuple[IntArray, IntArray, bool]:
    """Return ``y`` and ``t`` (both ``[E, G]``) and whether the makespan is proven optimal."""
    import highspy

    e_n, g_n = w.size, topology.num_gpus
    n_y = e_n * g_n
    n = 2 * n_y + 1
    m_col = 2 * n_y
    ye = np.arange(n_y)
    rows: list[IntArray] = []
    cols: list[IntArray] = []
    vals: list[npt.NDArray[np.float64]] = []
    lo: list[float] = []
    hi: list[float] = []

    def add(r_cols: IntArray, r_vals: npt.ArrayLike, lower: float, upper: float) -> None:
        rows.append(np.full(len(r_cols), len(lo)))
        cols.append(r_cols)
        vals.append(np.asarray(r_vals, dtype=np.float64))
        lo.append(lower)
        hi.append(upper)

    inf = highspy.kHighsInf
    for idx in ye:  # t[e,g] - w_e y[e,g] <= 0
        add(np.array([n_y + idx, idx]), [1.0, -float(w[idx // g_n])], -inf, 0.0)
    for e in range(e_n):
        span = e * g_n + np.arange(g_n)
        add(n_y + span, np.ones(g_n), float(w[e]), float(w[e]))  # conservation
        add(span, np.ones(g_n), 1.0, inf)  # at least one slot
    for g in range(g_n):
        col = np.arange(e_n) * g_n + g
        add(col, np.ones(e_n), -inf, float(topology.slots_per_gpu))  # slots per GPU
        add(np.append(n_y + col, m_col), np.append(np.ones(e_n), -1.0), -inf, 0.0)
    a = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(len(lo), n)
    )
    with _stdout_silenced():
        h = highspy.Highs()  # type: ignore[no-untyped-call]
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", float(time_limit_s))
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 0.999)  # the objective is integral
    h.setOptionValue("threads", 1)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n, len(lo)
    cost = np.zeros(n)
    cost[m_col] = 1.0
    lp.col_cost_ = cost
    lower = np.zeros(n)
    lower[m_col] = float(-(-int(w.sum()) // g_n))  # no GPU can be below the mean
    lp.col_lower_ = lower
    upper = np.concatenate([np.ones(n_y), np.repeat(w.astype(np.float64), g_n), [w.sum()]])
    lp.col_upper_ = upper
    lp.row_lower_ = np.array(lo)
    lp.row_upper_ = np.array(hi)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = a.indptr
    lp.a_matrix_.index_ = a.indices
    lp.a_matrix_.value_ = a.data
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = n, len(lo)
    # y and M integral; t continuous: for fixed y the split is a flow problem with integral
    # capacities, so an integral split at the same M exists (recovered below)
    kind = highspy.HighsVarType
    lp.integrality_ = [kind.kInteger] * n_y + [kind.kContinuous] * n_y + [kind.kInteger]
    h.passModel(lp)
    h.run()
    status = h.getModelStatus()
    if h.getInfo().primal_solution_status != 2:  # 2 = feasible
        raise SolverError(f"HiGHS found no feasible placement ({h.modelStatusToString(status)})")
    proven = status == highspy.HighsModelStatus.kOptimal
    x = np.asarray(h.getSolution().col_value)
    best_m = float(np.round(x[m_col]))
    # stage 2: fewest replicas on GPUs that did not hold the expert
    h.changeColBounds(m_col, 0.0, best_m)
    move_cost = np.array(
        [0.0 if e in prev_on_gpu[g] else 1.0 for e in range(e_n) for g in range(g_n)]
    )
    h.changeColsCost(n, np.arange(n), np.concatenate([move_cost, np.zeros(n_y + 1)]))
    h.setSolution(h.getSolution())
    # stage 2 only breaks ties; its proof is not needed, so it gets a short budget
    h.setOptionValue("time_limit", max(0.1, 0.2 * float(time_limit_s)))
    h.run()
    if h.getInfo().primal_solution_status == 2:
        x = np.asarray(h.getSolution().col_value)
    y_flat = np.round(x[:n_y])
    # stage 3: fix y and M, re-solve as an LP; its basic solution (a flow) is integral
    h.changeColsBounds(n_y, np.arange(n_y), y_flat, y_flat)
    h.changeColsCost(n, np.arange(n), np.zeros(n))
    h.run()
    if h.getInfo().primal_solution_status == 2:
        x = np.asarray(h.getSolution().col_value)
    y = y_flat.astype(np.int64).reshape(e_n, g_n)
    t = np.round(x[n_y:m_col]).astype(np.int64).reshape(e_n, g_n)
    t = np.where(y > 0, np.maximum(t, 0), 0)
    # repair rounding so each expert's tokens are conserved exactly
    for e_bad in np.flatnonzero(t.sum(axis=1) != w):
        e = int(e_bad)
        g = int(np.argmax(y[e] * (t[e] + 1)))
        t[e, g] += w[e] - t[e].sum()
    return y, t, proven


def solve_milp(
    load: npt.ArrayLike,
    topology: Topology,
    previous: Placement | None = None,
    time_limit_s: float = 10.0,
) -> MilpSolution:
    """Solve each layer of ``load`` ``[layers, experts]`` exactly (see module docstring).

    Without ``previous`` the static layout counts as the previous placement.

    Raises:
        InputError: bad load.
        SolverError: no feasible solution within ``time_limit_s`` for some layer.
    """
    arr = check_load(load, topology)
    layers, experts = arr.shape
    s = topology.slots_per_gpu
    if previous is None or previous.slot_expert.shape != (layers, topology.num_slots):
        static_home = home_layout(topology, experts, layers).home_slot()
        prev_expert = np.zeros((layers, topology.num_slots), dtype=np.int64)
        prev_filled = np.zeros((layers, topology.num_slots), dtype=bool)
        np.put_along_axis(
            prev_expert, static_home, np.broadcast_to(np.arange(experts), arr.shape), 1
        )
        np.put_along_axis(prev_filled, static_home, True, 1)
    else:
        prev_expert, prev_filled = previous.slot_expert, previous.slot_filled
    slot_expert = np.zeros((layers, topology.num_slots), dtype=np.int64)
    slot_filled = np.zeros((layers, topology.num_slots), dtype=bool)
    slot_tokens = np.zeros((layers, topology.num_slots), dtype=np.int64)
    proven_all = True
    for layer in range(layers):
        prev_on_gpu = [
            {
                int(prev_expert[layer, g * s + j])
                for j in range(s)
                if prev_filled[layer, g * s + j] and prev_expert[layer, g * s + j] < experts
            }
            for g in range(topology.num_gpus)
        ]
        y, t, proven = _solve_layer(arr[layer], topology, prev_on_gpu, time_limit_s)
        proven_all &= proven
        for g in range(topology.num_gpus):
            wanted = [int(e) for e in np.flatnonzero(y[:, g])]
            slots = list(range(g * s, (g + 1) * s))
            kept = {
                j: int(prev_expert[layer, j])
                for j in slots
                if prev_filled[layer, j] and int(prev_expert[layer, j]) in wanted
            }
            placed = set()
            for j, e in kept.items():
                if e not in placed:
                    slot_expert[layer, j], slot_filled[layer, j] = e, True
                    slot_tokens[layer, j] = t[e, g]
                    placed.add(e)
            free = [j for j in slots if not slot_filled[layer, j]]
            for e in wanted:
                if e not in placed:
                    j = free.pop(0)
                    slot_expert[layer, j], slot_filled[layer, j] = e, True
                    slot_tokens[layer, j] = t[e, g]
    placement = Placement(Policy.MILP, topology, experts, slot_expert, slot_filled, slot_tokens)
    return MilpSolution(placement, placement.gpu_tokens().max(axis=1), proven_all)
