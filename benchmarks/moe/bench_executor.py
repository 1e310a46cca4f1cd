"""Benchmark the expert-parallel executor: static placement vs the ForeMoE planner, for real.

Workload: the recorded RL trace (per-token routes of the policy-update stage), replayed on
the tiny MoE model (4 layers x 32 experts, top-4; float32, seeded random weights - routes
are replayed, so timings do not depend on the weights). Replay also frees the executed
widths from the recorded ones: ``--hidden`` and ``--expert-ffn`` run the same routes on a
wider model, and ``--tokens-scale N`` runs every sequence N times (rows per expert x N,
the recorded skew unchanged). Default: the recorded 128 x 128 at ~20 rows per expert and
layer, where fixed per-group and per-layer costs dwarf expert GEMMs; real MoE training
routes hundreds to thousands of rows to each expert. Two ranks (gloo), one torch thread
each, pinned to separate cores. Each mini-batch of the trace (8 micro-steps of gradient
accumulation) runs twice per repeat, interleaved: under the static placement (16 home
experts per rank, no replicas) and under ``plan_foremoe`` placements (homes pinned,
``--redundant`` replica slots per rank, planned ahead in the parent from the replayed
routes), with the transfer engine moving replicas for micro-step m+1 while m computes.
Planning is cost-aware by default: the parent measures, pinned to one core with one
thread, one expert's fixed cost per group and its weight copy in tokens of its compute
(``measure_replica_cost``), and the planner keeps a replica only where it lowers the
busiest rank's modelled cost (``--no-cost-aware``: every replica the packing places).
The update time is forward + backward of every micro-step plus the gradient reductions
(the optimizer step is the same for both and is not run).

On a CPU a weight transfer uses the same cores as compute; exposed_transfer_fraction is
the time micro-steps waited for replicas (plus publishing the host copy) over the
micro-step time, as measured.

sim_mape: the planner issue's simulator time model (``llmsys.moe.simulator.PhaseTimer``:
dense + busiest-GPU expert compute + all-to-all per layer, update stage) with a
HardwareProfile measured on this machine (expert forward + backward FLOP/s and per-group
overhead on one pinned thread; gloo all-to-all latency and bandwidth) and its one
remaining figure, the dense cost per token, fitted on the micro-steps of the calibration
steps of the trace (even steps), predicting the micro-step time (forward + backward,
summed over the mini-batch) of every mini-batch of the other steps (odd), both policies.
The end-of-batch reductions and barriers are outside that model;
``sim_mape_with_reductions`` compares the same prediction with the whole measured update
time.

Usage: python benchmarks/moe/bench_executor.py [--trace PATH] [--steps N] [--repeat N]
       [--redundant N] [--hidden D] [--expert-ffn F] [--tokens-scale N] [--no-cost-aware]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmsys.core.provenance import config_hash, git_sha
from llmsys.moe.ep.dist import DistConfig
from llmsys.moe.ep.replay import (
    POLICIES,
    RankReplay,
    ReplayPlan,
    measure_replica_cost,
    plan_replay,
    run_replay,
)
from llmsys.moe.lm.config import MoEConfig
from llmsys.moe.lm.recorded import load_recorded
from llmsys.moe.placement import Placement, ReplicaCost, slots_moved
from llmsys.moe.simulator import HardwareProfile, PhaseTimer
from llmsys.moe.topology import Topology, home_layout
from llmsys.moe.tracegen import Stage


def _features(
    trace: Any, topo: Topology, placement: Placement, hw: HardwareProfile, dense: float
) -> float:
    timer = PhaseTimer(trace, topo, hw, dense)
    gpu = placement.gpu_tokens().astype(np.float64)
    active = (placement.slot_tokens > 0).reshape(placement.num_layers, topo.num_gpus, -1).sum(-1)
    d, e, a = timer.phases(gpu, active.astype(np.float64), Stage.UPDATE)
    return d + e + a


def _profile(prims: dict[str, float]) -> HardwareProfile:
    return HardwareProfile(
        name="dev machine, measured",
        bf16_peak_flops=prims["flops"],
        matmul_efficiency=1.0,
        nvlink_bytes_per_s=prims["link_bytes_per_s"],
        pcie_bytes_per_s=prims["link_bytes_per_s"],
        ib_bytes_per_s=prims["link_bytes_per_s"],
        link_efficiency=1.0,
        all_to_all_latency_s=prims["a2a_latency_s"],
        expert_gemm_overhead_s=prims["gemm_overhead_s"],
        bytes_per_value=4,
    )


def fit_profile(
    trace: Any, topo: Topology, prims: dict[str, float], samples: list[tuple[Placement, float]]
) -> tuple[HardwareProfile, float]:
    """The measured profile, plus the one figure fitted on calibration micro-steps: the dense
    FLOPs per token (attention, norms, head, and per-layer Python overhead), from the median
    of what the measured expert and all-to-all terms leave unexplained."""
    hw = _profile(prims)
    rest = [t - _features(trace, topo, p, hw, 0.0) for p, t in samples]
    local_tokens = trace.tokens_per_micro / topo.num_gpus
    dense_s = max(float(np.median(rest)), 1e-9)
    # PhaseTimer: dense = layers * local_tokens * dense_flops / flops * 3 (update stage)
    dense = dense_s * hw.flops / (3.0 * trace.shape.num_layers * local_tokens)
    return hw, dense


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=None, help="recorded trace (default: shipped)")
    ap.add_argument("--steps", type=int, default=4, help="RL steps of the trace to replay")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved repeats (after a warm-up)")
    ap.add_argument(
        "--redundant",
        type=int,
        default=1,
        help="replica slots per rank (default 1: one slot already balances the shipped trace "
        "on 2 ranks to 1.0004; each replica adds a fixed ~85 us per pass on this CPU)",
    )
    ap.add_argument(
        "--hidden", type=int, default=None, help="executed hidden size (default: the trace's)"
    )
    ap.add_argument(
        "--expert-ffn",
        type=int,
        default=None,
        help="executed expert FFN width (default: the trace's); routes stay the recorded ones",
    )
    ap.add_argument(
        "--tokens-scale",
        type=int,
        default=1,
        help="run every sequence of a micro-step this many times (rows per expert x N, "
        "same skew; default 1: the recorded ~20 rows per expert and layer)",
    )
    ap.add_argument(
        "--cost-aware",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep only replicas that pay their measured fixed costs (default: on)",
    )
    ap.add_argument("--timeout-s", type=float, default=120.0, help="collective timeout")
    ap.add_argument("--out", type=Path, default=Path("results/bench_executor.json"))
    args = ap.parse_args(argv)
    run = load_recorded(args.trace)
    shape = run.trace.shape
    model = MoEConfig(
        num_layers=shape.num_layers,
        hidden=args.hidden or shape.hidden,
        num_experts=shape.num_experts,
        top_k=shape.top_k,
        expert_ffn=args.expert_ffn or shape.expert_ffn,
    )
    cores = sorted(os.sched_getaffinity(0))[:2]
    args.replica_cost = _parent_replica_cost(model, cores[0])
    plan = plan_replay(
        run,
        args.steps,
        args.redundant,
        hidden=model.hidden,
        expert_ffn=model.expert_ffn,
        cost=args.replica_cost if args.cost_aware else None,
        tokens_scale=args.tokens_scale,
    )
    cfg = DistConfig(
        world_size=2,
        timeout_s=args.timeout_s,
        threads=1,
        cores=tuple(cores) if len(cores) == 2 else None,
        preload=("torch", "torch.distributed", "llmsys.moe.ep.replay"),
    )
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    results = run_replay(plan, args.repeat, cfg)
    wall = time.perf_counter() - t0
    args.load_avg_1m = (round(load_before, 2), round(os.getloadavg()[0], 2))
    return report(args, plan, results, wall)


def _parent_replica_cost(model: MoEConfig, core: int) -> ReplicaCost:
    """Measure the replica cost as a rank would see it: one thread, pinned to one core."""
    threads, affinity = torch.get_num_threads(), os.sched_getaffinity(0)
    torch.set_num_threads(1)
    os.sched_setaffinity(0, {core})
    try:
        torch.manual_seed(0)
        return measure_replica_cost(model)
    finally:
        os.sched_setaffinity(0, affinity)
        torch.set_num_threads(threads)


def _agg(results: list[RankReplay]) -> dict[tuple[int, int, str], dict[str, Any]]:
    """Per (rep, mini, policy): the slowest rank's times (the group finishes with it)."""
    out: dict[tuple[int, int, str], dict[str, Any]] = {}
    for res in results:
        for r in res.records:
            key = (r["rep"], r["mini"], r["policy"])
            cur = out.setdefault(
                key,
                {"total_s": 0.0, "micro_s": [0.0] * len(r["micro_s"]), "wait": 0.0, "work": 0.0},
            )
            cur["total_s"] = max(cur["total_s"], r["total_s"])
            cur["micro_s"] = [max(a, b) for a, b in zip(cur["micro_s"], r["micro_s"], strict=True)]
            frac_num = sum(r["wait_s"]) + r["publish_s"]
            frac_den = sum(r["micro_s"]) + r["publish_s"]
            if frac_num / frac_den >= cur["wait"] / max(cur["work"], 1e-12):
                cur["wait"], cur["work"] = frac_num, frac_den
    return out


def report(
    args: argparse.Namespace, plan: ReplayPlan, results: list[RankReplay], wall: float
) -> int:
    agg = _agg(results)
    minis = plan.minis
    n = len(minis)
    med = {
        (i, p): float(
            np.median([v["total_s"] for (rep, mi, pol), v in agg.items() if mi == i and pol == p])
        )
        for i in range(n)
        for p in ("static", "foremoe")
    }
    p99 = {
        p: float(np.percentile([v["total_s"] for (rep, mi, pol), v in agg.items() if pol == p], 99))
        for p in ("static", "foremoe")
    }
    static_total = sum(med[(i, "static")] for i in range(n))
    fore_total = sum(med[(i, "foremoe")] for i in range(n))
    speedups = [med[(i, "static")] / med[(i, "foremoe")] for i in range(n)]
    fracs = [v["wait"] / v["work"] for (rep, mi, pol), v in agg.items() if pol == "foremoe"]
    exposed = float(np.median(fracs))
    # simulator calibration: even steps calibrate, odd steps are predicted
    topo, trace = plan.topology, plan.trace
    micro_med: dict[tuple[int, str], np.ndarray] = {}
    for i in range(n):
        for p in ("static", "foremoe"):
            arr = np.array(
                [v["micro_s"] for (rep, mi, pol), v in agg.items() if mi == i and pol == p]
            )
            micro_med[(i, p)] = np.median(arr, axis=0)
    # forward + backward only (no end-of-batch reductions, no host-copy publish)
    micro_total = {p: sum(float(micro_med[(i, p)].sum()) for i in range(n)) for p in POLICIES}
    calib = [i for i in range(n) if minis[i]["step"] % 2 == 0]
    held = [i for i in range(n) if minis[i]["step"] % 2 == 1]
    samples = [
        (it[p], float(micro_med[(i, p)][m]))
        for i in calib
        for p in ("static", "foremoe")
        for m, it in enumerate(minis[i]["items"])
    ]
    hw, dense = fit_profile(trace, topo, results[0].primitives, samples)
    errors, errors_total = [], []
    for i in held:
        for p in ("static", "foremoe"):
            predicted = sum(_features(trace, topo, it[p], hw, dense) for it in minis[i]["items"])
            measured = float(micro_med[(i, p)].sum())
            errors.append(abs(predicted - measured) / measured)
            errors_total.append(abs(predicted - med[(i, p)]) / med[(i, p)])
    sim_mape = float(np.mean(errors)) if errors else float("nan")
    predicted = {
        p: sum(_features(trace, topo, it[p], hw, dense) for mi in minis for it in mi["items"])
        for p in ("static", "foremoe")
    }
    sim_mape_total = float(np.mean(errors_total)) if errors_total else float("nan")
    imb = {
        p: float(np.mean([it[p].imbalance().mean() for mi in minis for it in mi["items"]]))
        for p in ("static", "foremoe")
    }
    replicas = [
        float((it["foremoe"].slot_tokens[:, _redundant(plan)] > 0).sum())
        for mi in minis
        for it in mi["items"]
    ]
    moved = []
    for mi in minis:
        for a, b in zip(mi["items"][:-1], mi["items"][1:], strict=True):
            moved.append(float(slots_moved(a["foremoe"], b["foremoe"]).sum()))
    print(f"{'mini':>4} {'step':>4} {'static s':>9} {'foremoe s':>9} {'speedup':>8}")
    for i in range(n):
        s_s, f_s = med[(i, "static")], med[(i, "foremoe")]
        print(f"{i:>4} {minis[i]['step']:>4} {s_s:>9.4f} {f_s:>9.4f} {speedups[i]:>8.3f}")
    print(f"update time, {n} mini-batches: static {static_total:.3f} s, foremoe {fore_total:.3f} s")
    print(
        f"forward + backward only: static {micro_total['static']:.3f} s, foremoe "
        f"{micro_total['foremoe']:.3f} s (the rest: reductions, publish, barriers)"
    )
    print(f"imbalance (max/mean rank tokens): static {imb['static']:.3f}, ", end="")
    print(f"foremoe {imb['foremoe']:.3f}")
    print(f"exposed transfer fraction (median over foremoe mini-batches): {exposed:.4f}")
    direct_bw, host_bw = results[0].link.direct_bytes_per_s, results[0].link.host_bytes_per_s
    print(f"moves per path: {results[0].paths}; B/s direct {direct_bw:.3g}, host {host_bw:.3g}")
    prims = results[0].primitives
    print(
        f"measured: expert FLOP/s {prims['flops']:.3g}, per-group overhead "
        f"{prims['gemm_overhead_s'] * 1e6:.1f} us, a2a latency "
        f"{prims['a2a_latency_s'] * 1e6:.0f} us, a2a B/s {prims['link_bytes_per_s']:.3g}; "
        f"fitted dense FLOPs/token {dense:.3g}"
    )
    cost = args.replica_cost
    print(
        f"model hidden {plan.model['hidden']}, expert FFN {plan.model['expert_ffn']}, tokens x"
        f"{args.tokens_scale}; replica "
        f"cost (measured, tokens): group {cost.group_cost_tokens:.1f}, move "
        f"{cost.move_cost_tokens:.1f}; planning cost-aware: {args.cost_aware}; busy replica "
        f"slots per micro-step {np.mean(replicas):.2f}"
    )
    print(f"sim MAPE on held-out steps: {sim_mape:.4f} (micro-steps), ", end="")
    print(f"{sim_mape_total:.4f} (with the end-of-batch reductions); ", end="")
    print(f"simulated speedup {predicted['static'] / predicted['foremoe']:.3f}")
    out = {
        "exposed_transfer_fraction": round(exposed, 5),
        "update_step_speedup_vs_static": round(static_total / fore_total, 4),
        "update_step_speedup_per_minibatch_median": round(float(np.median(speedups)), 4),
        "microstep_speedup_vs_static": round(micro_total["static"] / micro_total["foremoe"], 4),
        "sim_mape": round(sim_mape, 4),
        "sim_mape_with_reductions": round(sim_mape_total, 4),
        "sim_predicted_speedup": round(predicted["static"] / predicted["foremoe"], 4),
        "static_update_s": round(static_total, 4),
        "static_minibatch_p99_s": round(p99["static"], 4),
        "foremoe_minibatch_p99_s": round(p99["foremoe"], 4),
        "foremoe_update_s": round(fore_total, 4),
        "imbalance_static": round(imb["static"], 4),
        "imbalance_foremoe": round(imb["foremoe"], 4),
        "slots_moved_per_micro_mean": round(float(np.mean(moved)), 3) if moved else 0.0,
        "busy_replicas_per_micro_mean": round(float(np.mean(replicas)), 3),
        "hidden": plan.model["hidden"],
        "expert_ffn": plan.model["expert_ffn"],
        "tokens_scale": args.tokens_scale,
        "cost_aware": args.cost_aware,
        "replica_group_cost_tokens": round(cost.group_cost_tokens, 2),
        "replica_move_cost_tokens": round(cost.move_cost_tokens, 2),
        "moves_direct": results[0].paths["direct"],
        "moves_host": results[0].paths["host"],
        "minibatches": n,
        "repeats": args.repeat,
        "wall_s": round(wall, 1),
        "load_avg_1m_before_after": list(args.load_avg_1m),
        "git_sha": git_sha(),
        "config_hash": config_hash(
            {
                "trace": str(args.trace),
                "steps": args.steps,
                "repeat": args.repeat,
                "redundant": args.redundant,
                "cost_aware": args.cost_aware,
                "tokens_scale": args.tokens_scale,
                "cfg": plan.model,
            }
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out))
    return 0


def _redundant(plan: ReplayPlan) -> np.ndarray:
    """Global indices of the redundant slots (each rank's slots after its homes)."""
    shape = plan.trace.shape
    return home_layout(plan.topology, shape.num_experts, shape.num_layers).redundant_slots()


if __name__ == "__main__":
    sys.exit(main())
