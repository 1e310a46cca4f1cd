"""The public API of llmsys.moe.lm is what its __all__ says."""

import llmsys.moe.lm as lm


def test_all_is_pinned() -> None:
    assert sorted(lm.__all__) == sorted(
        [
            "SHIPPED_CHECKPOINT",
            "SHIPPED_TRACE",
            "Balance",
            "Corpus",
            "Domain",
            "ForwardOut",
            "KVCache",
            "MoEConfig",
            "MoELM",
            "Problem",
            "RLConfig",
            "RLResult",
            "RecordedRun",
            "Rollout",
            "RouteMode",
            "StepRecord",
            "TrainConfig",
            "TrainLog",
            "build_corpus",
            "expert_forward",
            "load_model",
            "load_recorded",
            "make_problem",
            "pretrain",
            "reward",
            "rl_step",
            "rollout",
            "run_rl",
            "save_checkpoint",
            "train_checkpoint",
        ]
    )
    for name in lm.__all__:
        assert hasattr(lm, name)
