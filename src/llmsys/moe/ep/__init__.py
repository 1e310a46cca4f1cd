"""llmsys.moe.ep - expert-parallel execution of placements over torch.distributed.

Protocol
--------
1. :func:`run_ranks` starts a group of ranks (:class:`DistConfig`: gloo on CPU, NCCL on
   GPUs) whose collectives time out; a rank that dies, raises or hangs ends the run with
   :class:`RankFailedError` / :class:`RankTimeoutError` naming it.
2. :class:`EPMoELayer` executes one layer of a :class:`~llmsys.moe.Placement`: uneven
   all-to-all dispatch with the plan's token counts (:func:`dispatch_matrix`), each local
   slot's expert (homes are parameters, replicas come from a :class:`ReplicaStore`),
   reverse all-to-all to combine, autograd through all of it (:func:`all_to_all`).
   :func:`reduce_replica_grads` sends replica gradients home once per mini-batch; optimizer
   state exists only at home.
3. :class:`TransferEngine` moves replica weights for micro-step m+1 while m computes, over
   two paths (:class:`TransferPath`: direct point-to-point, or CPU-assisted through a
   node-local :class:`HostCopy` published once per mini-batch), picked per move by
   :func:`plan_moves` from a modelled finish time (:class:`LinkModel`); completions set
   events in the store and waits are recorded as exposed time.
4. :class:`Executor` runs mini-batches of replayed :class:`MicroStep` s on a model sharded
   by :func:`shard_model`; :func:`run_update` is the GRPO policy update of an
   :class:`UpdateBatch` on it, with the planner choosing a placement per micro-step
   (:func:`plan_update`) and the global gradient norm clipped (:func:`clip_grad_norm`).
5. :func:`plan_replay` / :func:`run_replay` replay a recorded trace's update stage under
   static and planned placements and return raw timings (:class:`RankReplay`) - what
   ``benchmarks/moe/bench_executor.py`` (and a CLI) analyse.

Exceptions
----------
::

    LlmsysError
    ├── ConfigError / InputError (InvalidPlacementError)   bad settings, plans, counts
    ├── RankFailedError       a rank died or raised (``.ranks`` names it)
    │   └── RankTimeoutError  a rank hung past the timeout
    └── ReplicaError          a replica never fetched, or late past its timeout
"""

from llmsys.moe.ep.comm import all_reduce_grads, all_to_all
from llmsys.moe.ep.dist import (
    Backend,
    DistConfig,
    RankFailedError,
    RankTimeoutError,
    StartMethod,
    run_ranks,
)
from llmsys.moe.ep.executor import (
    Executor,
    MicroStep,
    MinibatchStats,
    rank_counts,
    rank_rows,
    shard_model,
)
from llmsys.moe.ep.layer import EPMoELayer, dispatch_matrix
from llmsys.moe.ep.replay import RankReplay, ReplayPlan, plan_replay, run_replay
from llmsys.moe.ep.replicas import ReplicaError, ReplicaStore, reduce_replica_grads
from llmsys.moe.ep.transfer import (
    HostCopy,
    LinkModel,
    Move,
    TransferEngine,
    TransferPath,
    plan_moves,
    replica_needs,
)
from llmsys.moe.ep.update import (
    UpdateBatch,
    UpdateConfig,
    clip_grad_norm,
    plan_update,
    run_update,
)

__all__ = [
    "Backend",
    "DistConfig",
    "EPMoELayer",
    "Executor",
    "HostCopy",
    "LinkModel",
    "MicroStep",
    "MinibatchStats",
    "Move",
    "RankFailedError",
    "RankReplay",
    "RankTimeoutError",
    "ReplayPlan",
    "ReplicaError",
    "ReplicaStore",
    "StartMethod",
    "TransferEngine",
    "TransferPath",
    "UpdateBatch",
    "UpdateConfig",
    "all_reduce_grads",
    "all_to_all",
    "clip_grad_norm",
    "dispatch_matrix",
    "plan_moves",
    "plan_replay",
    "plan_update",
    "rank_counts",
    "rank_rows",
    "reduce_replica_grads",
    "replica_needs",
    "run_ranks",
    "run_replay",
    "run_update",
    "shard_model",
]
