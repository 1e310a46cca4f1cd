"""llmsys.moe - micro-step MoE load balancing for RL post-training (ForeMoE).

Protocol
--------
Under router replay every micro-step's routed load ``L[step, stage, micro, layer, expert]``
is known before the micro-step runs, so balancing is planning, not prediction.

1. A :class:`RoutingTrace` holds those loads (npz on disk: :meth:`RoutingTrace.save`,
   :func:`load_trace`); :func:`generate_trace` draws a parametric one for a
   :class:`ModelShape` (``QWEN3_30B_A3B`` and friends) from :class:`TraceParams`.
2. A :class:`Topology` (nodes x GPUs per node x expert slots per GPU) numbers slots
   GPU-major. A :class:`HomeLayout` pins each expert to one home slot per layer
   (:func:`home_layout` for static EP, :func:`pack_homes` for a load-balanced one); the
   other slots are redundant and hold replicas.
3. A planner maps one micro-step's load ``[layers, experts]`` plus the live
   :class:`Placement` to a new :class:`Placement`: :func:`plan_foremoe` (ours),
   :func:`plan_static`, :func:`plan_eplb` / :func:`serve_eplb` (DeepSeek EPLB,
   :func:`rebalance_experts`), :func:`plan_reactive`, and :func:`solve_milp` (exact, small
   instances). :func:`plan` dispatches on a :class:`Policy`. :func:`plan_foremoe` given a
   :class:`ReplicaCost` keeps only replicas that pay their fixed costs. Planners are pure:
   they move no data. The caller loads the weights of the slots :func:`slots_moved` reports;
   home experts keep weights and optimizer state, replicas are copies whose gradients
   are reduced back home.
4. :func:`simulate` replays a trace through a policy on a simulated 64-GPU cluster
   (:class:`SimConfig`, :class:`HardwareProfile` from :func:`load_profile`) and returns a
   :class:`SimResult`. Every timing it produces is simulated, not measured.

Exceptions
----------
::

    LlmsysError (llmsys.core.errors)
    ├── ConfigError            bad topology, trace parameters, hardware profile
    ├── InputError             bad load, lookahead, trace file or placement JSON
    │   └── InvalidPlacementError   a placement breaks an invariant
    └── SolverError            HiGHS found no feasible placement in time
"""

from llmsys.moe.baselines import (
    plan_eplb,
    plan_reactive,
    plan_static,
    rebalance_experts,
    serve_eplb,
)
from llmsys.moe.milp import MilpSolution, SolverError, solve_milp
from llmsys.moe.placement import (
    InvalidPlacementError,
    Placement,
    Policy,
    ReplicaCost,
    slots_moved,
)
from llmsys.moe.planner import check_load, pack_homes, plan_foremoe
from llmsys.moe.policies import plan
from llmsys.moe.simulator import (
    HardwareProfile,
    SimConfig,
    SimResult,
    load_profile,
    simulate,
)
from llmsys.moe.topology import HomeLayout, Topology, home_layout
from llmsys.moe.tracegen import (
    DEEPSEEK_V3,
    MODEL_SHAPES,
    OLMOE_1B_7B,
    QWEN3_30B_A3B,
    ModelShape,
    Popularity,
    RoutingTrace,
    Stage,
    TraceParams,
    generate_trace,
    load_trace,
)

__all__ = [
    "DEEPSEEK_V3",
    "MODEL_SHAPES",
    "OLMOE_1B_7B",
    "QWEN3_30B_A3B",
    "HardwareProfile",
    "HomeLayout",
    "InvalidPlacementError",
    "MilpSolution",
    "ModelShape",
    "Placement",
    "Policy",
    "Popularity",
    "ReplicaCost",
    "RoutingTrace",
    "SimConfig",
    "SimResult",
    "SolverError",
    "Stage",
    "Topology",
    "TraceParams",
    "check_load",
    "generate_trace",
    "home_layout",
    "load_profile",
    "load_trace",
    "pack_homes",
    "plan",
    "plan_eplb",
    "plan_foremoe",
    "plan_reactive",
    "plan_static",
    "rebalance_experts",
    "serve_eplb",
    "simulate",
    "slots_moved",
    "solve_milp",
]
