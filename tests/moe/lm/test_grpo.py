"""GRPO stages under router replay: exact replay, log-prob agreement, replay matters."""

from __future__ import annotations

import pytest
import torch

from llmsys.core.errors import ConfigError
from llmsys.moe.lm.config import MoEConfig
from llmsys.moe.lm.grpo import RLConfig
from llmsys.moe.lm.model import MoELM
from llmsys.moe.lm.rl import run_rl

SMALL = MoEConfig(num_layers=2, hidden=32, num_heads=2, num_experts=8, top_k=2, expert_ffn=16)
FAST = RLConfig(
    steps=2,
    prompts_per_step=4,
    group_size=4,
    micro_batch_seqs=2,
    shots=1,
    max_new_tokens=4,
    lr=3e-3,
)


def _model() -> MoELM:
    torch.manual_seed(0)
    return MoELM(SMALL)


def test_replay_reproduces_rollout_routes_and_logprobs() -> None:
    result = run_rl(_model(), FAST)
    for rec in result.records:
        assert rec.route_mismatch == (0.0, 0.0)
        assert rec.logprob_max_abs_diff <= 1e-5
        # recompute and update replay the same routes, so their loads are equal
        assert (rec.loads[0] == rec.loads[1]).all()
    run = result.run
    assert (run.counted_loads() == run.trace.loads[:, 1]).all()


def test_without_replay_routes_drift_after_an_update() -> None:
    result = run_rl(_model(), RLConfig(**{**_fields(FAST), "replay": False}))
    # before any update the weights equal the rollout's; after one they do not
    assert result.records[0].route_mismatch[1] > 0
    assert any(r.route_mismatch[1] > 0.01 for r in result.records)


def test_loads_count_valid_tokens_times_top_k() -> None:
    result = run_rl(_model(), RLConfig(**{**_fields(FAST), "steps": 1}))
    rec = result.records[0]
    _, valid = rec.rollout.inputs
    per_layer = rec.loads[1].sum(axis=(0, 2))
    assert (per_layer == int(valid.sum()) * SMALL.top_k).all()


def test_batch_must_split_into_micro_steps() -> None:
    with pytest.raises(ConfigError):
        RLConfig(prompts_per_step=3, group_size=3, micro_batch_seqs=2)
    with pytest.raises(ConfigError):
        RLConfig(steps=0)


def _fields(cfg: RLConfig) -> dict[str, object]:
    return {name: getattr(cfg, name) for name in cfg.__dataclass_fields__}


def test_recompute_matches_rollout_at_another_temperature() -> None:
    result = run_rl(_model(), RLConfig(**{**_fields(FAST), "steps": 1, "temperature": 0.7}))
    assert result.records[0].logprob_max_abs_diff <= 1e-5


def test_bad_rl_settings_are_config_errors() -> None:
    for bad in ({"ops": "/"}, {"max_operand": 0}, {"clip_eps": 0.0}, {"aux_loss_coef": -1.0}):
        with pytest.raises(ConfigError):
            RLConfig(**{**_fields(FAST), **bad})


def test_special_ids_are_never_sampled() -> None:
    from llmsys.moe.lm.rollout import byte_logprobs, rollout

    m = _model()
    with torch.no_grad():
        m.tok_emb.weight[256:] *= 1000  # make the tied head favour PAD/BOS/EOS
    lp = byte_logprobs(torch.randn(3, 260), 1.0)
    assert torch.isinf(lp[:, 256:]).all() and torch.allclose(lp.exp().sum(-1), torch.ones(3))
    ro = rollout(m, ["1+2=", "3+4="], 4, torch.Generator().manual_seed(0))
    assert int(ro.tokens[ro.response_mask].max()) < 256
