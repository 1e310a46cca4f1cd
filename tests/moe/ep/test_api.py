"""Pins the public API of llmsys.moe.ep."""

import llmsys.moe.ep as ep


def test_all_is_pinned() -> None:
    assert sorted(ep.__all__) == [
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
    for name in ep.__all__:
        assert getattr(ep, name) is not None
