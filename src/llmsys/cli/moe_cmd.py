"""``llmsys moe ...`` subcommands: ``plan`` and ``simulate``.

Each command is registered by its own function, so more commands (``train``, ``rl``,
``trace-stats``) can be added beside them without touching these.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from llmsys.cli.moe_lm_cmd import register_lm
from llmsys.core.errors import InputError

POLICIES = ("foremoe", "eplb", "reactive", "static", "milp")


def register(sub: Any) -> None:
    """Add the ``moe`` subcommand and its children to ``sub`` (an argparse subparsers object)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "moe",
        help="micro-step MoE load balancing (ForeMoE): plan placements, simulate 64 GPUs",
        description="Micro-step MoE expert placement for RL post-training (ForeMoE).",
    )
    children = parser.add_subparsers(dest="moe_command", metavar="COMMAND")
    children.required = True
    _register_plan(children)
    _register_simulate(children)
    register_lm(children)


def _register_plan(children: Any) -> None:
    p = children.add_parser(
        "plan",
        help="plan one micro-step's expert placement from a load matrix",
        description=(
            "Plan which expert sits in each slot and how many tokens each slot takes. "
            "Prints {'policy', 'layers': [{'slot_expert', 'slot_tokens', 'gpu_tokens'}]}; "
            "slot_expert is GPU-major (node, GPU, slot), null for an empty slot."
        ),
    )
    p.add_argument(
        "--load",
        type=Path,
        required=True,
        help="LOAD.npy: [layers, experts] (or [experts]) tokens routed per expert",
    )
    p.add_argument("--nodes", type=int, required=True, help="nodes in the expert-parallel group")
    p.add_argument("--gpus-per-node", type=int, required=True, help="GPUs per node")
    p.add_argument("--slots-per-gpu", type=int, required=True, help="expert slots per GPU")
    p.add_argument(
        "--previous",
        type=Path,
        default=None,
        help="PLACEMENT.json: the live placement (this command's --json output)",
    )
    p.add_argument("--policy", choices=POLICIES, default="foremoe", help="placement policy")
    p.add_argument(
        "--milp-time-limit-s",
        type=float,
        default=10.0,
        help="HiGHS time limit per layer for --policy milp",
    )
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.set_defaults(handler=_plan)


def _register_simulate(children: Any) -> None:
    p = children.add_parser(
        "simulate",
        help="simulate one RL step on 64 GPUs (8 nodes x 8) under a policy (simulated times)",
        description=(
            "Replay a routing trace through a policy on a simulated 64-GPU H100 cluster "
            "(8 nodes x 8 GPUs, 3 slots per GPU). All times printed are simulated."
        ),
    )
    p.add_argument(
        "--trace",
        default="synthetic",
        help="TRACE.npz routing trace, or 'synthetic' (default) for the "
        "parametric Qwen3-30B-A3B trace at default parameters",
    )
    p.add_argument("--policy", choices=POLICIES, default="foremoe", help="placement policy")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="synthetic trace only: RL steps to generate (default: generator's)",
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(handler=_simulate)


def _read_load(path: Path) -> np.ndarray[Any, Any]:
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read a .npy load matrix ({exc})") from exc


def _plan(args: argparse.Namespace) -> int:
    from llmsys.core.errors import ConfigError
    from llmsys.moe import Placement, Policy, Topology, check_load, plan

    try:
        topo = Topology(args.nodes, args.gpus_per_node, args.slots_per_gpu)
    except ConfigError as exc:
        raise InputError(str(exc)) from exc
    load = check_load(_read_load(args.load), topo, name=str(args.load))
    previous = None
    if args.previous is not None:
        try:
            obj = json.loads(args.previous.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{args.previous}: cannot read placement JSON ({exc})") from exc
        previous = Placement.from_json(obj, topo, load.shape[1], source=str(args.previous))
        if previous.num_layers != load.shape[0]:
            raise InputError(
                f"{args.previous}: {previous.num_layers} layers, load has {load.shape[0]}"
            )
    placement = plan(load, topo, Policy(args.policy), previous, args.milp_time_limit_s)
    placement.check_against(load)
    if args.json:
        print(json.dumps(placement.to_json()))
    else:
        imb = placement.imbalance()
        print(
            f"policy {args.policy}: {placement.num_layers} layers, "
            f"imbalance (max/mean GPU tokens) mean {imb.mean():.3f}, max {imb.max():.3f}"
        )
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from llmsys.moe import (
        QWEN3_30B_A3B,
        Policy,
        TraceParams,
        generate_trace,
        load_trace,
        simulate,
    )

    if args.trace == "synthetic":
        params = TraceParams() if args.steps is None else TraceParams(steps=args.steps)
        trace = generate_trace(QWEN3_30B_A3B, params)
    else:
        if args.steps is not None:
            raise InputError("--steps applies only to --trace synthetic")
        trace = load_trace(Path(args.trace))
    result = simulate(trace, Policy(args.policy))
    out = {
        "simulated": True,
        "policy": result.policy.value,
        "model": trace.shape.name,
        "gpus": 64,
        "step_time_s": result.step_time_s,
        "expert_compute_s": result.expert_compute_s,
        "exposed_transfer_s": result.exposed_transfer_s,
        "imbalance_mean": result.imbalance_mean,
        "slots_moved_fraction": result.slots_moved_fraction,
        "imbalance_bound_share": result.imbalance_bound_share,
        "effective_imbalance": result.effective_imbalance,
        "speedup_ceiling": result.ceiling_vs(),
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"SIMULATED 64-GPU step ({trace.shape.name}, policy {out['policy']}):")
        for key, value in out.items():
            if isinstance(value, float):
                print(f"  {key:24s} {value:.4f}")
    return 0
