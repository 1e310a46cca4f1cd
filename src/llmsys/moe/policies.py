"""One entry point for every policy: :func:`plan` dispatches on :class:`Policy`.

Protocol: ``plan(load, topology, policy, previous)`` returns the placement that ``policy``
chooses for one micro-step's load ``[layers, experts]`` given the live placement. Used by
the CLI (``llmsys moe plan``) so that every policy runs through the same checks.
"""

from __future__ import annotations

import numpy.typing as npt

from llmsys.core.errors import InputError
from llmsys.moe.baselines import plan_eplb, plan_reactive, plan_static
from llmsys.moe.milp import solve_milp
from llmsys.moe.placement import Placement, Policy
from llmsys.moe.planner import check_load, plan_foremoe
from llmsys.moe.topology import Topology


def plan(
    load: npt.ArrayLike,
    topology: Topology,
    policy: Policy = Policy.FOREMOE,
    previous: Placement | None = None,
    milp_time_limit_s: float = 10.0,
) -> Placement:
    """Plan one micro-step with ``policy``.

    With a single load and no history, ``eplb`` plans from this load itself and ``reactive``
    packs homes from it (or keeps ``previous``'s homes).

    Raises:
        InputError: bad load or previous placement.
        SolverError: ``milp`` found no feasible placement in time.
    """
    arr = check_load(load, topology)
    if previous is not None and (
        previous.topology != topology
        or previous.num_experts != arr.shape[1]
        or previous.num_layers != arr.shape[0]
    ):
        raise InputError(
            f"previous placement is for {previous.num_layers} layers x {previous.num_experts} "
            f"experts on {previous.topology}, load is {arr.shape[0]} x {arr.shape[1]} on "
            f"{topology}"
        )
    if policy is Policy.STATIC:
        return plan_static(arr, topology)
    if policy is Policy.EPLB:
        return plan_eplb(arr, topology)
    if policy is Policy.REACTIVE:
        return plan_reactive(arr, topology, previous=previous)
    if policy is Policy.MILP:
        return solve_milp(arr, topology, previous, milp_time_limit_s).placement
    return plan_foremoe(arr, topology, previous)
