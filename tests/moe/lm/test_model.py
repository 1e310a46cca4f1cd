"""The MoE model: record/replay exactness, KV-cache decoding, validation."""

from __future__ import annotations

import pytest
import torch

from llmsys.core.errors import ConfigError, InputError
from llmsys.moe.lm.config import Balance, MoEConfig
from llmsys.moe.lm.model import KVCache, MoELM, RouteMode

SMALL = MoEConfig(
    num_layers=2, hidden=32, num_heads=2, num_experts=8, top_k=2, expert_ffn=16, max_seq_tokens=64
)


def _model(cfg: MoEConfig = SMALL, seed: int = 0) -> MoELM:
    torch.manual_seed(seed)
    return MoELM(cfg).eval()


def _batch(b: int = 3, t: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 256, (b, t), generator=g)
    valid = torch.ones(b, t, dtype=torch.bool)
    valid[0, :4] = False  # left padding
    return tokens, valid


def test_replay_of_recorded_routes_is_bitwise_equal() -> None:
    m = _model()
    tokens, valid = _batch()
    rec = m(tokens, valid, RouteMode.RECORD)
    rep = m(tokens, valid, RouteMode.REPLAY, routes=rec.routes)
    assert torch.equal(rep.routes, rec.routes)
    assert torch.equal(rep.logits, rec.logits)
    assert rec.routes.shape == (3, 12, SMALL.num_layers, SMALL.top_k)


def test_replay_uses_given_routes_not_the_routers_choice() -> None:
    m = _model()
    tokens, valid = _batch()
    rec = m(tokens, valid)
    forced = (rec.routes + 1) % SMALL.num_experts
    rep = m(tokens, valid, RouteMode.REPLAY, routes=forced)
    assert torch.equal(rep.routes, forced)
    assert not torch.allclose(rep.logits, rec.logits)


def test_router_gets_gradients_under_replay() -> None:
    m = _model().train()
    tokens, valid = _batch()
    routes = m(tokens, valid).routes
    out = m(tokens, valid, RouteMode.REPLAY, routes=routes)
    out.logits.sum().backward()
    for blk in m.blocks:
        assert blk.moe.router.weight.grad is not None
        assert blk.moe.router.weight.grad.abs().sum() > 0


def test_kv_cache_decoding_matches_full_forward() -> None:
    m = _model()
    tokens, valid = _batch(t=10)
    full = m(tokens, valid)
    cache = KVCache()
    pre = m(tokens[:, :6], valid[:, :6], cache=cache)
    steps = [pre.logits]
    for j in range(6, 10):
        steps.append(m(tokens[:, j : j + 1], valid[:, j : j + 1], cache=cache).logits)
    inc = torch.cat(steps, dim=1)
    ok = valid.unsqueeze(-1).expand_as(full.logits)
    assert torch.allclose(inc[ok], full.logits[ok], atol=1e-5)


def test_padding_does_not_change_real_tokens() -> None:
    m = _model()
    tokens, valid = _batch()
    out = m(tokens, valid)
    shifted = m(tokens[0:1, 4:], valid[0:1, 4:])
    assert torch.allclose(out.logits[0, 4:], shifted.logits[0], atol=1e-5)


def test_aux_loss_only_in_training_with_balancing() -> None:
    tokens, valid = _batch()
    m = _model().train()
    assert float(m(tokens, valid).aux_loss) > 0
    off = MoELM(MoEConfig(**{**SMALL.to_dict(), "balance": Balance.NONE})).train()
    assert float(off(tokens, valid).aux_loss) == 0.0
    assert float(m.eval()(tokens, valid).aux_loss) == 0.0


def test_shared_expert_runs() -> None:
    cfg = MoEConfig(**{**SMALL.to_dict(), "balance": Balance.AUX_LOSS, "shared_expert": True})
    m = _model(cfg)
    tokens, valid = _batch()
    assert m(tokens, valid).logits.shape == (3, 12, 260)


def test_bad_inputs_are_rejected() -> None:
    m = _model()
    tokens, valid = _batch()
    with pytest.raises(InputError):
        m(tokens, valid, RouteMode.REPLAY)
    routes = m(tokens, valid).routes
    with pytest.raises(InputError):
        m(tokens, valid, RouteMode.REPLAY, routes=routes.to(torch.uint8))
    with pytest.raises(InputError):
        m(tokens, valid, RouteMode.REPLAY, routes=routes + SMALL.num_experts)
    with pytest.raises(InputError):
        m(tokens, valid[:, :5])
    with pytest.raises(InputError):
        m(torch.zeros(1, 65, dtype=torch.long), torch.ones(1, 65, dtype=torch.bool))
    with pytest.raises(ConfigError):
        MoEConfig(num_experts=4, top_k=5)
    with pytest.raises(ConfigError):
        MoEConfig(hidden=30, num_heads=4)
    with pytest.raises(ConfigError):
        MoEConfig.from_dict({"balance": "sometimes"})


def test_kv_cache_routes_match_a_full_recorded_forward() -> None:
    torch.manual_seed(0)
    m = MoELM(SMALL).to(torch.float64).eval()
    tokens, valid = _batch(t=10)
    full = m(tokens, valid)
    cache = KVCache()
    steps = [m(tokens[:, :6], valid[:, :6], cache=cache).routes]
    for j in range(6, 10):
        steps.append(m(tokens[:, j : j + 1], valid[:, j : j + 1], cache=cache).routes)
    inc = torch.cat(steps, dim=1)
    assert torch.equal(inc.sort(-1).values[valid], full.routes.sort(-1).values[valid])
