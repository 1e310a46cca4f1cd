"""Replaying a recorded RL trace's update stage on the executor, static vs planned.

Protocol
--------
:func:`plan_replay` reads the per-token routes of a :class:`~llmsys.moe.lm.recorded.RecordedRun`
and cuts every RL step's update stage into ``mini_batches_per_step`` mini-batches of
micro-steps (the cut of :func:`llmsys.moe.lm.grpo.rl_step`), each with two placements
planned ahead in the calling process: ``plan_static`` and ``plan_foremoe`` (homes pinned to
the static layout, each placement chained to the one before). The result, a
:class:`ReplayPlan`, is what every rank runs.

:func:`run_replay` starts the ranks (:func:`~llmsys.moe.ep.dist.run_ranks`) and each runs
:func:`replay_rank`: it shards a seeded model, measures its links (one expert over each
transfer path, :func:`calibrate_links`) and this machine's primitives for the simulator
(:func:`measure_primitives`), then runs every mini-batch under both policies, interleaved
(the order alternates), ``repeat`` times after one warm-up; ``foremoe`` runs with the
transfer engine moving replicas ahead. The loss is the GRPO surrogate of a first mini-batch
(old log-probs equal to the new ones) with the recorded rewards' group advantages. The
optimizer step is not run (it is the same for both policies). Each rank returns a
:class:`RankReplay` of raw timings; analysis is the caller's.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from llmsys.core.errors import ConfigError
from llmsys.moe.baselines import plan_static
from llmsys.moe.ep.comm import ProcessGroup
from llmsys.moe.ep.dist import DistConfig, run_ranks
from llmsys.moe.ep.executor import Executor, LossFn, MicroStep, rank_counts, shard_model
from llmsys.moe.ep.layer import EPMoELayer
from llmsys.moe.ep.replicas import ReplicaStore
from llmsys.moe.ep.transfer import HostCopy, LinkModel, TransferEngine, TransferPath
from llmsys.moe.lm.config import MoEConfig
from llmsys.moe.lm.model import ForwardOut, MoELM, expert_forward
from llmsys.moe.lm.recorded import RecordedRun
from llmsys.moe.placement import Placement, ReplicaCost
from llmsys.moe.planner import plan_foremoe
from llmsys.moe.topology import Topology, home_layout
from llmsys.moe.tracegen import RoutingTrace

POLICIES = ("static", "foremoe")
"""Policy names in a replay (the keys of each micro-step's placements)."""


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """Mini-batches of replayed micro-steps with both policies' placements."""

    model: dict[str, Any]
    """:meth:`MoEConfig.to_dict` of the model."""
    topology: Topology
    """One node, ``world_size`` ranks, homes plus ``redundant`` slots each."""
    trace: RoutingTrace = field(repr=False)
    """The loads of the recorded run with the executed model's shape (the simulator reads
    its shape and token count)."""
    minis: list[dict[str, Any]] = field(repr=False)
    """Per mini-batch: ``step`` and ``items`` (per micro-step: ``tokens``, ``valid``,
    ``routes``, ``adv`` arrays and the ``static`` and ``foremoe`` placements)."""


@dataclass(frozen=True, slots=True)
class RankReplay:
    """What one rank measured."""

    records: list[dict[str, Any]]
    """Per (repeat, mini-batch, policy): ``total_s``, ``micro_s``, ``wait_s``,
    ``publish_s``, ``reduce_s``, ``moves``."""
    link: LinkModel
    """The measured link model the engine used."""
    paths: dict[str, int]
    """Moves per transfer path (all ranks' moves)."""
    primitives: dict[str, float]
    """:func:`measure_primitives` figures."""


def plan_replay(
    run: RecordedRun,
    steps: int,
    redundant_slots: int,
    world_size: int = 2,
    mini_batches_per_step: int = 2,
    hidden: int | None = None,
    expert_ffn: int | None = None,
    cost: ReplicaCost | None = None,
    tokens_scale: int = 1,
) -> ReplayPlan:
    """Cut the update stage into mini-batches and plan both policies ahead.

    Routes are replayed, so the executed model's widths need not be the recorded model's:
    ``hidden`` and ``expert_ffn`` override them (the trace in the plan carries the executed
    shape, so the simulator times what runs). ``tokens_scale`` runs every sequence of a
    micro-step that many times (each rank keeps its own sequences, repeated), so loads and
    rows per expert grow ``tokens_scale``-fold with the recorded skew unchanged. ``cost``
    makes the ForeMoE placements cost-aware (:class:`~llmsys.moe.placement.ReplicaCost`).

    Raises:
        ConfigError: counts below 1, micro-steps that do not split into mini-batches, or
            widths the model does not accept.
    """
    if min(steps, world_size, mini_batches_per_step, tokens_scale) < 1 or redundant_slots < 0:
        raise ConfigError("steps, world_size, mini-batches, tokens_scale >= 1, slots >= 0")
    k = tokens_scale
    shape = dataclasses.replace(
        run.trace.shape,
        hidden=run.trace.shape.hidden if hidden is None else hidden,
        expert_ffn=run.trace.shape.expert_ffn if expert_ffn is None else expert_ffn,
    )
    trace = dataclasses.replace(
        run.trace,
        shape=shape,
        loads=run.trace.loads * k,
        tokens_per_micro=run.trace.tokens_per_micro * k,
    )
    cfg = MoEConfig(
        num_layers=shape.num_layers,
        hidden=shape.hidden,
        num_experts=shape.num_experts,
        top_k=shape.top_k,
        expert_ffn=shape.expert_ffn,
    )
    micro = run.trace.loads.shape[2]
    if micro % mini_batches_per_step:
        raise ConfigError(f"{micro} micro-steps do not split into {mini_batches_per_step}")
    topo = Topology(1, world_size, -(-shape.num_experts // world_size) + redundant_slots)
    homes = home_layout(topo, shape.num_experts, shape.num_layers)
    per_mini, spm = micro // mini_batches_per_step, run.seqs_per_micro
    minis = []
    for s in range(min(steps, run.trace.loads.shape[0])):
        prev: Placement | None = None
        rewards = run.rewards[s].astype(np.float64).reshape(-1, run.group_size)
        centred = rewards - rewards.mean(1, keepdims=True)
        adv = (centred / (rewards.std(1, keepdims=True) + 1e-6)).reshape(-1)
        for mb in range(mini_batches_per_step):
            items = []
            for m in range(mb * per_mini, (mb + 1) * per_mini):
                rows = slice(m * spm, (m + 1) * spm)
                valid = run.valid[s, rows]
                width = int(np.flatnonzero(valid.any(axis=0)).max(initial=0)) + 1
                load = trace.loads[s, 1, m]
                fore = plan_foremoe(load, topo, prev, homes=homes, cost=cost)
                prev = fore
                items.append(
                    {
                        "tokens": run.tokens[s, rows, :width].astype(np.int64).repeat(k, 0),
                        "valid": valid[:, :width].repeat(k, 0),
                        "routes": run.routes[s, rows, :width].astype(np.int64).repeat(k, 0),
                        "adv": adv[rows].repeat(k),
                        "static": plan_static(load, topo),
                        "foremoe": fore,
                    }
                )
            minis.append({"step": s, "items": items})
    return ReplayPlan(cfg.to_dict(), topo, trace, minis)


def calibrate_links(
    layers: list[EPMoELayer], host: HostCopy, group: ProcessGroup | None, rank: int
) -> LinkModel:
    """One expert moved rank 1 -> 0 and copied from the host copy, median of 7; every rank
    gets rank 0's figures (the path choice must be identical everywhere). Collective."""
    numel = layers[0].expert_numel
    nbytes = numel * layers[0].w1.element_size()
    host.publish(layers, rank, 0)
    buf = torch.zeros(numel, dtype=layers[0].w1.dtype)
    direct, copy = [], []
    for _ in range(7):
        dist.barrier(group=group)
        t0 = time.perf_counter()
        work = None
        if rank == 0:
            work = dist.irecv(buf, 1, group=group)
        elif rank == 1:
            work = dist.isend(buf, 0, group=group)
        if work is not None:
            work.wait()
        direct.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        host.read((0, 0), 0, 0, 10.0)
        copy.append(time.perf_counter() - t0)
    figures = torch.tensor([float(np.median(direct)), float(np.median(copy))], dtype=torch.float64)
    dist.broadcast(figures, 0, group=group)
    d, c = figures.tolist()
    return LinkModel(1e-6, nbytes / d, 1e-6, nbytes / c)


def measure_expert_cost(cfg: MoEConfig) -> tuple[float, float]:
    """``(seconds per row, fixed seconds per group)`` of one expert's forward + backward on
    this thread: a line through the fastest of 20 runs at 8..256 rows (on a shared machine
    noise only adds time). The slope is clamped above zero: a model too small for its
    compute to show under the overhead can fit a slope of zero or below."""
    d, f = cfg.hidden, cfg.expert_ffn
    w = [torch.randn(d, f) / 11, torch.randn(d, f) / 11, torch.randn(f, d) / 11]
    for t in w:
        t.requires_grad_(True)
    sizes = np.array([8, 32, 128, 256])
    times = []
    for n in sizes:
        h = torch.randn(int(n), d, requires_grad=True)
        ts = []
        for _ in range(20):
            t0 = time.perf_counter()
            expert_forward(h, *w).sum().backward()
            ts.append(time.perf_counter() - t0)
        times.append(min(ts))
    slope, intercept = np.polyfit(sizes, times, 1)
    return float(max(slope, 1e-12)), float(max(intercept, 0.0))


def measure_replica_cost(cfg: MoEConfig) -> ReplicaCost:
    """The :class:`~llmsys.moe.placement.ReplicaCost` of ``cfg`` 's experts on this thread.

    Group cost: :func:`measure_expert_cost`'s intercept over its slope. Move cost: one
    expert's float32 weights copied in memory (what a host-path move costs the receiving
    core on a CPU), median of 20, over the slope.
    """
    row_s, group_s = measure_expert_cost(cfg)
    numel = 3 * cfg.hidden * cfg.expert_ffn
    src, dst = torch.randn(numel), torch.empty(numel)
    ts = []
    for _ in range(20):
        t0 = time.perf_counter()
        dst.copy_(src)
        ts.append(time.perf_counter() - t0)
    return ReplicaCost(group_s / row_s, float(np.median(ts)) / row_s)


def measure_primitives(cfg: MoEConfig, world: int) -> dict[str, float]:
    """This rank's figures for the simulator's time model. Collective.

    One expert's forward + backward (:func:`measure_expert_cost`: FLOP/s from the slope,
    overhead per expert group and pass from the intercept) and gloo all-to-alls of
    8..1024 rows per peer (latency and bandwidth, fastest of 20).
    """
    d, f = cfg.hidden, cfg.expert_ffn
    slope, intercept = measure_expert_cost(cfg)
    rows = np.array([8, 64, 256, 1024])
    a2a = []
    for r in rows:
        x = torch.randn(int(r) * world, d)
        out = torch.empty_like(x)
        ts = []
        for _ in range(20):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_to_all_single(out, x)
            ts.append(time.perf_counter() - t0)
        a2a.append(min(ts))
    a_slope, a_intercept = np.polyfit(rows * world * d * 4, a2a, 1)
    return {
        # forward + backward = 3 x the forward's 6 d f FLOPs per row
        "flops": float(3 * 6 * d * f / slope),
        "gemm_overhead_s": float(max(intercept / 3, 1e-7)),
        "a2a_latency_s": float(max(a_intercept, 1e-7)),
        "link_bytes_per_s": float(1.0 / max(a_slope, 1e-15)),
    }


def _surrogate(steps: list[MicroStep], adv: list[torch.Tensor]) -> LossFn:
    """GRPO surrogate of a first mini-batch (ratio 1 in value, gradients as in training)."""
    n_tokens = max(1, sum(int(ms.valid[:, 1:].sum()) for ms in steps))

    def loss_fn(out: ForwardOut, m: int, rows: slice) -> torch.Tensor:
        ms = steps[m]
        logp = torch.log_softmax(out.logits[:, :-1], dim=-1)
        lp = logp.gather(-1, ms.tokens[rows][:, 1:, None]).squeeze(-1)
        ratio = torch.exp(lp - lp.detach())
        a = adv[m][rows].unsqueeze(1)
        surrogate = torch.minimum(ratio * a, ratio.clamp(0.8, 1.2) * a)
        policy = -(surrogate * ms.valid[rows][:, 1:]).sum() / n_tokens
        return policy + 0.01 * out.aux_loss / len(steps)

    return loss_fn


def replay_rank(
    rank: int, world: int, plan: ReplayPlan, repeat: int, run_id: str, shm_dir: Path
) -> RankReplay:
    """One rank of :func:`run_replay` (see the module docstring)."""
    cfg = MoEConfig.from_dict(plan.model)
    torch.manual_seed(0)
    model = MoELM(cfg).train()
    homes = home_layout(plan.topology, cfg.num_experts, cfg.num_layers)
    store = ReplicaStore()
    layers = shard_model(model, homes, rank, store)
    numel = layers[0].expert_numel
    host = HostCopy(shm_dir, run_id, cfg.num_layers, cfg.num_experts, numel, world, torch.float32)
    group = dist.new_group(backend="gloo")
    # every rank has mapped the files: remove them now, so nothing is left in shm_dir
    # whatever happens (the mappings stay valid until the processes exit)
    dist.barrier()
    if rank == 0:
        host.unlink()
    link = calibrate_links(layers, host, group, rank)
    primitives = measure_primitives(cfg, world)
    engine = TransferEngine(layers, store, link, host, group)
    runners = {
        "static": Executor(model, layers, store, None),
        "foremoe": Executor(model, layers, store, engine),
    }
    minis: dict[str, list[list[MicroStep]]] = {p: [] for p in POLICIES}
    advs = []
    for mini in plan.minis:
        advs.append([torch.from_numpy(it["adv"]).float() for it in mini["items"]])
        for policy in POLICIES:
            steps = []
            for it in mini["items"]:
                tokens, valid = torch.from_numpy(it["tokens"]), torch.from_numpy(it["valid"])
                routes = torch.from_numpy(it["routes"])
                counts = rank_counts(routes, valid, world, cfg.num_experts)
                steps.append(MicroStep(tokens, valid, routes, it[policy], counts))
            minis[policy].append(steps)
    records: list[dict[str, Any]] = []
    for rep in range(repeat + 1):  # repeat 0 is the warm-up
        for i in range(len(plan.minis)):
            order = POLICIES if (rep + i) % 2 == 0 else POLICIES[::-1]
            for policy in order:
                model.zero_grad(set_to_none=True)
                dist.barrier()
                t0 = time.perf_counter()
                loss = _surrogate(minis[policy][i], advs[i])
                stats = runners[policy].run_minibatch(minis[policy][i], loss)
                total = time.perf_counter() - t0
                if rep > 0:
                    records.append(
                        {
                            "rep": rep,
                            "mini": i,
                            "policy": policy,
                            "total_s": total,
                            "micro_s": list(stats.micro_wall_s),
                            "wait_s": list(stats.exposed_wait_s),
                            "publish_s": stats.publish_s,
                            "reduce_s": stats.reduce_s,
                            "moves": stats.moves,
                        }
                    )
    engine.close()
    dist.barrier()
    paths = {p.value: sum(1 for m in engine.moves if m.path is p) for p in TransferPath}
    return RankReplay(records, link, paths, primitives)


def run_replay(
    plan: ReplayPlan,
    repeat: int,
    dist_config: DistConfig,
    shm_dir: Path = Path("/dev/shm"),
) -> list[RankReplay]:
    """Run :func:`replay_rank` on every rank of ``dist_config``; results in rank order.

    Raises:
        ConfigError: the group size differs from the plan's topology, or ``repeat`` < 1.
        RankFailedError: a rank failed or hung (see :func:`~llmsys.moe.ep.dist.run_ranks`).
    """
    if dist_config.world_size != plan.topology.num_gpus or repeat < 1:
        raise ConfigError("run_replay needs one rank per planned GPU and repeat >= 1")
    out: list[RankReplay] = run_ranks(
        replay_rank, dist_config, plan, repeat, uuid.uuid4().hex, shm_dir
    )
    return out
