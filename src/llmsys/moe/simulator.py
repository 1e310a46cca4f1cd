"""Simulated RL step on a 64-GPU expert-parallel group (all figures are simulated).

Protocol: :func:`simulate` replays a :class:`~llmsys.moe.tracegen.RoutingTrace` through one
policy and returns a :class:`SimResult`. Per micro-step the policy is asked for a placement
(the same planner functions the CLI calls), then every layer is timed as

``dense compute + expert compute (busiest GPU) + dispatch and combine all-to-all``

with the busiest GPU setting each phase (the all-to-all barrier). Recompute runs forward
only; update runs forward and backward (3x compute, 2x all-to-all). Expert weights that a
placement newly needs travel GPU-direct over NVLink when a GPU on the same node holds them,
otherwise from the node's host copy (CPU-assisted, PCIe) and over InfiniBand at once. In
the update stage every used replica's gradient is reduced to its home expert. Where that
traffic sits is the policies' difference:

* ``foremoe`` knows micro-step ``t+1``'s loads (router replay) and moves its weights while
  micro-step ``t`` computes; only what does not fit under ``t``'s compute is exposed. Homes
  are re-packed once per step from that step's loads (known after rollout), exposed.
* ``reactive`` learns the loads when the router runs: per layer it waits for an all-gather
  of expert counts and its planning, and its weight moves are on the critical path.
* ``eplb`` re-plans at each step start from a moving average of past steps, exposed.
* ``static`` never moves anything.

The hardware comes from a profile file (:func:`load_profile`) whose every figure names its
source. :attr:`SimResult.ceiling_vs` gives the ceiling ``1 / ((1 - f) + f / I)`` of any
speedup over this run, with ``f`` the share of step time bound by the busiest GPU (expert
compute and all-to-all) and ``I`` the run's effective imbalance over those phases.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import numpy.typing as npt

from llmsys.core.errors import ConfigError
from llmsys.moe.baselines import plan_eplb, plan_reactive, plan_static, serve_eplb
from llmsys.moe.placement import Placement, Policy, slots_moved
from llmsys.moe.planner import layout_of, pack_homes, plan_foremoe
from llmsys.moe.topology import HomeLayout, Topology
from llmsys.moe.tracegen import RoutingTrace, Stage

FloatArray = npt.NDArray[np.float64]
DEFAULT_PROFILE = Path(__file__).with_name("profiles") / "h100_nvlink_ib400.toml"


@dataclass(frozen=True, slots=True)
class HardwareProfile:
    """Per-GPU hardware figures (sources are in the profile file)."""

    name: str
    """Human-readable description."""
    bf16_peak_flops: float
    """Dense BF16 peak, FLOP/s."""
    matmul_efficiency: float
    """Fraction of peak that GEMMs reach."""
    nvlink_bytes_per_s: float
    """NVLink bandwidth per direction."""
    pcie_bytes_per_s: float
    """PCIe (host to GPU) bandwidth per direction."""
    ib_bytes_per_s: float
    """InfiniBand bandwidth per GPU per direction."""
    link_efficiency: float
    """Fraction of link bandwidth an all-to-all reaches."""
    all_to_all_latency_s: float
    """Fixed cost of one all-to-all."""
    expert_gemm_overhead_s: float
    """Fixed cost per non-empty expert slot per pass."""
    bytes_per_value: int
    """Bytes per weight or activation value."""

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name != "name" and not getattr(self, f.name) > 0:
                raise ConfigError(f"hardware profile: {f.name} must be > 0")

    @property
    def flops(self) -> float:
        """Effective FLOP/s."""
        return self.bf16_peak_flops * self.matmul_efficiency


def load_profile(path: Path | None = None) -> HardwareProfile:
    """Read a hardware profile TOML (default: the bundled H100 profile).

    Raises:
        ConfigError: unreadable file, unknown or missing keys, or bad values.
    """
    p = path if path is not None else DEFAULT_PROFILE
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read hardware profile ({exc})") from exc
    known = {f.name for f in fields(HardwareProfile)}
    if set(data) != known:
        raise ConfigError(f"{p}: unknown keys {set(data) - known}, missing {known - set(data)}")
    return HardwareProfile(**data)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """What the benchmark fixes about the simulated run (not tuned per policy)."""

    topology: Topology = field(default_factory=lambda: Topology(8, 8, 3))
    """Expert-parallel group: 8 nodes x 8 GPUs, 3 slots per GPU."""
    dense_flops_per_token: float = 7.17e7
    """Forward FLOPs per token per layer outside the experts. Qwen3-30B-A3B: attention
    projections 2 x 18.9 M params, causal attention at 4,096 tokens 33.5 M, router 0.5 M."""
    lookahead: int = 0
    """Upcoming micro-steps ForeMoE's eviction order looks at (0: off; measured on the
    default trace, a 2-step window did not lower weight moves, see docs/benchmarks.md)."""
    eplb_decay: float = 0.5
    """Weight of the newest step in EPLB's moving average."""
    reactive_plan_s_per_layer: float = 4e-5
    """Planning time the reactive policy spends per layer after its router runs: the
    measured CPU time of this planner on the dev machine, 1.9 ms for 48 layers. Reactive
    also waits for one all-gather of expert counts per layer (``all_to_all_latency_s``).
    ForeMoE plans from replayed routes ahead of time, off the critical path."""


@dataclass(frozen=True, slots=True)
class SimResult:
    """Simulated timings of one policy over a trace (steady state: steps after the first)."""

    policy: Policy
    """Policy simulated."""
    step_time_s: float
    """Mean simulated step time (MoE layers of recompute + update)."""
    imbalance_bound_s: float
    """Mean time per step in phases set by the busiest GPU (expert compute, all-to-all)."""
    balanced_bound_s: float
    """The same phases if every GPU had the mean token count."""
    expert_compute_s: float
    """Mean expert-compute time per step (busiest GPU)."""
    exposed_transfer_s: float
    """Mean weight-transfer and gradient-reduction time per step on the critical path."""
    imbalance_mean: float
    """Mean max/mean GPU tokens over micro-steps and layers."""
    slots_moved_fraction: float
    """Mean fraction of slots whose expert changed, per micro-step."""

    @property
    def imbalance_bound_share(self) -> float:
        """f: share of step time bound by the busiest GPU."""
        return self.imbalance_bound_s / self.step_time_s

    @property
    def effective_imbalance(self) -> float:
        """I: busiest-GPU-bound time over its perfectly balanced value."""
        return self.imbalance_bound_s / self.balanced_bound_s

    def ceiling_vs(self) -> float:
        """Largest speedup any balancer could reach over this run: 1 / ((1-f) + f/I)."""
        f, i = self.imbalance_bound_share, self.effective_imbalance
        return 1.0 / ((1.0 - f) + f / i)


@dataclass
class PhaseTimer:
    """Per-layer time model of one micro-step, vectorised over layers: dense, expert and
    all-to-all seconds from GPU token counts and active experts (what :func:`simulate` uses;
    public so that measured runs, e.g. ``benchmarks/moe/bench_executor.py``, can be compared
    against the same model)."""

    trace: RoutingTrace
    topo: Topology
    hw: HardwareProfile
    dense_flops: float

    def phases(
        self, gpu_tokens: FloatArray, active: FloatArray, stage: Stage
    ) -> tuple[float, float, float]:
        """Return (dense, expert, all-to-all) seconds for one micro-step, summed over layers."""
        hw, topo, shape = self.hw, self.topo, self.trace.shape
        compute_mult, a2a_mult = (1.0, 1.0) if stage is Stage.RECOMPUTE else (3.0, 2.0)
        local_tokens = self.trace.tokens_per_micro / topo.num_gpus
        layers = gpu_tokens.shape[0]
        dense = layers * local_tokens * self.dense_flops / hw.flops * compute_mult
        expert_flops = 6.0 * shape.hidden * shape.expert_ffn
        per_gpu = gpu_tokens * expert_flops / hw.flops + active * hw.expert_gemm_overhead_s
        expert = float(per_gpu.max(axis=1).sum()) * compute_mult
        # all-to-all: sources spread uniformly over GPUs; each direction runs concurrently
        value_bytes = shape.hidden * hw.bytes_per_value
        local_share = topo.gpus_per_node / topo.num_gpus
        nvl = hw.nvlink_bytes_per_s * hw.link_efficiency
        ib = hw.ib_bytes_per_s * hw.link_efficiency
        recv = gpu_tokens * value_bytes
        node_tokens = gpu_tokens.reshape(layers, topo.num_nodes, -1).sum(-1)
        node_share = node_tokens / np.maximum(gpu_tokens.sum(1, keepdims=True), 1)
        send = local_tokens * shape.top_k * value_bytes
        send_local = np.repeat(send * node_share, topo.gpus_per_node, axis=1)
        t = np.maximum.reduce(
            [
                recv * local_share / nvl,
                recv * (1 - local_share) / ib,
                send_local / nvl,
                (send - send_local) / ib,
            ]
        )
        a2a = float((t.max(axis=1) + hw.all_to_all_latency_s).sum()) * 2 * a2a_mult
        return dense, expert, a2a

    def _time(self, local: FloatArray, remote: FloatArray) -> float:
        hw = self.hw
        nvl = hw.nvlink_bytes_per_s * hw.link_efficiency
        far = (hw.pcie_bytes_per_s + hw.ib_bytes_per_s) * hw.link_efficiency
        return float(np.maximum(local / nvl, remote / far).max(axis=1).sum())

    def move_s(self, prev: Placement | None, cur: Placement) -> float:
        """Seconds to load the weights of ``cur``'s slots that ``prev`` did not hold."""
        topo = self.topo
        if prev is None:
            return 0.0
        move_bytes = self.trace.shape.expert_params * self.hw.bytes_per_value
        layers = cur.num_layers
        slot_node = topo.slot_gpu() // topo.gpus_per_node
        local = np.zeros((layers, topo.num_gpus))
        remote = np.zeros((layers, topo.num_gpus))
        same = prev.slot_filled & (prev.slot_expert == cur.slot_expert)
        moved = cur.slot_filled & ~same
        have = np.zeros((layers, topo.num_nodes, cur.num_experts), dtype=bool)
        li, si = np.nonzero(prev.slot_filled)
        have[li, slot_node[si], prev.slot_expert[li, si]] = True
        li, si = np.nonzero(moved)
        near = have[li, slot_node[si], cur.slot_expert[li, si]]
        np.add.at(local, (li[near], si[near] // topo.slots_per_gpu), move_bytes)
        np.add.at(remote, (li[~near], si[~near] // topo.slots_per_gpu), move_bytes)
        return self._time(local, remote)

    def grad_reduce_s(self, cur: Placement) -> float:
        """Seconds to reduce the gradients of ``cur``'s used replicas to their homes."""
        topo = self.topo
        grad_bytes = self.trace.shape.expert_params * self.hw.bytes_per_value
        used = np.zeros((cur.num_layers, cur.num_experts), dtype=np.int64)
        li, si = np.nonzero(cur.slot_tokens > 0)
        np.add.at(used, (li, cur.slot_expert[li, si]), 1)
        # each extra used copy of an expert sends its gradient home; spread over GPUs
        extra = np.maximum(used - 1, 0).sum(axis=1).astype(np.float64)
        remote = np.repeat((extra * grad_bytes / topo.num_gpus)[:, None], topo.num_gpus, axis=1)
        return self._time(np.zeros_like(remote), remote)


def replay(
    trace: RoutingTrace,
    policy: Policy,
    topology: Topology,
    lookahead: int = 0,
    eplb_decay: float = 0.5,
) -> Iterator[tuple[int, int, Stage, Placement]]:
    """Yield ``(step, k, stage, placement)`` for every micro-step, as ``policy`` plans it.

    ``k`` counts micro-steps within the step across stages. What each policy may know:
    ``foremoe`` the whole step's loads (router replay) for its homes and the next
    ``lookahead`` micro-steps; ``eplb`` and ``reactive`` a moving average of past steps
    (weight ``eplb_decay`` on the newest); ``reactive`` also the current micro-step.
    """
    steps, n_stages, micros, layers, experts = trace.loads.shape
    history: FloatArray | None = None
    prev: Placement | None = None
    flat = [(s, m) for s in range(n_stages) for m in range(micros)]
    for step in range(steps):
        step_load = trace.loads[step].reshape(-1, layers, experts)
        past = history if history is not None else np.ones((layers, experts))
        homes: HomeLayout | None = None
        eplb_plan: Placement | None = None
        if policy is Policy.FOREMOE:
            live = None if prev is None else layout_of(prev)
            homes = pack_homes(step_load.mean(axis=0), topology, live)
        elif policy is Policy.REACTIVE:
            homes = pack_homes(past, topology)
        elif policy is Policy.EPLB:
            eplb_plan = plan_eplb(step_load[0], topology, planning_load=past)
        for k, (s, m) in enumerate(flat):
            load = trace.loads[step, s, m]
            if policy is Policy.STATIC:
                cur = plan_static(load, topology)
            elif eplb_plan is not None:
                cur = serve_eplb(load, eplb_plan)
            elif policy is Policy.REACTIVE:
                cur = plan_reactive(load, topology, homes=homes)
            else:
                ahead = [trace.loads[step, s2, m2] for s2, m2 in flat[k + 1 : k + 1 + lookahead]]
                window = np.stack(ahead) if ahead else None
                cur = plan_foremoe(load, topology, prev, lookahead=window, homes=homes)
            yield step, k, trace.stages[s], cur
            prev = cur
        mean_load = step_load.mean(axis=0)
        history = (
            mean_load if history is None else (eplb_decay * mean_load + (1 - eplb_decay) * history)
        )


def simulate(
    trace: RoutingTrace,
    policy: Policy,
    config: SimConfig | None = None,
    hardware: HardwareProfile | None = None,
) -> SimResult:
    """Replay ``trace`` under ``policy`` and time it (see the module docstring).

    Raises:
        ConfigError: the policy cannot run at this size (``milp``), or the topology has
            fewer slots than the trace has experts.
    """
    cfg = config if config is not None else SimConfig()
    hw = hardware if hardware is not None else load_profile()
    topo = cfg.topology
    if policy is Policy.MILP:
        raise ConfigError("the milp policy is for small instances; it cannot run a 64-GPU step")
    topo.check_experts(trace.shape.num_experts)
    timer = PhaseTimer(trace, topo, hw, cfg.dense_flops_per_token)
    layers = trace.shape.num_layers
    prev: Placement | None = None
    step_times: list[float] = []
    bound: list[float] = []
    bal: list[float] = []
    expert_t: list[float] = []
    exposed: list[float] = []
    imb: list[float] = []
    moved: list[float] = []
    budget = 0.0  # compute time of the previous micro-step, available for prefetch
    pending_s = 0.0  # background traffic (gradient reductions) waiting for that window
    totals = np.zeros(5)  # step, bound, balanced, expert, exposed
    for step, k, stage, cur in replay(trace, policy, topo, cfg.lookahead, cfg.eplb_decay):
        if k == 0 and step > 0:
            totals += [pending_s, 0, 0, 0, pending_s]  # last reductions end the step
            pending_s = 0.0
            for acc, v in zip((step_times, bound, bal, expert_t, exposed), totals, strict=True):
                acc.append(float(v))
            totals = np.zeros(5)
        gpu = cur.gpu_tokens().astype(np.float64)
        active = (cur.slot_tokens > 0).reshape(layers, topo.num_gpus, -1).sum(-1)
        dense, expert_s, a2a = timer.phases(gpu, active.astype(np.float64), stage)
        mean = np.repeat(gpu.mean(axis=1, keepdims=True), topo.num_gpus, axis=1)
        _, expert_b, a2a_b = timer.phases(mean, active.astype(np.float64), stage)
        move_s = timer.move_s(prev, cur)
        if policy is Policy.REACTIVE:
            # loads are known only when the router runs: gather counts, plan, move weights
            per_layer = cfg.reactive_plan_s_per_layer + hw.all_to_all_latency_s
            exposed_s = move_s + layers * per_layer + max(0.0, pending_s - budget)
        elif k == 0:  # a new step's layout: weights arrive on the critical path
            exposed_s = move_s + max(0.0, pending_s - budget)
        else:
            exposed_s = max(0.0, move_s + pending_s - budget)
        compute = dense + expert_s + a2a
        budget = compute
        pending_s = timer.grad_reduce_s(cur) if stage is Stage.UPDATE else 0.0
        totals += [compute + exposed_s, expert_s + a2a, expert_b + a2a_b, expert_s, exposed_s]
        imb.append(float(cur.imbalance().mean()))
        if prev is not None:
            moved.append(float(slots_moved(prev, cur).sum()) / (layers * topo.num_slots))
        prev = cur
    totals += [pending_s, 0, 0, 0, pending_s]
    for acc, v in zip((step_times, bound, bal, expert_t, exposed), totals, strict=True):
        acc.append(float(v))
    keep = slice(1, None) if trace.loads.shape[0] > 1 else slice(None)
    return SimResult(
        policy,
        float(np.mean(step_times[keep])),
        float(np.mean(bound[keep])),
        float(np.mean(bal[keep])),
        float(np.mean(expert_t[keep])),
        float(np.mean(exposed[keep])),
        float(np.mean(imb)),
        float(np.mean(moved)) if moved else 0.0,
    )
