"""GRPO post-training with router replay, in the three stages of real RL stacks.

Protocol
--------
One RL step (:func:`rl_step`):

1. **Rollout.** ``prompts_per_step`` arithmetic problems, each repeated ``group_size``
   times consecutively (a GRPO group), are sampled with a KV cache
   (:func:`~llmsys.moe.lm.rollout.rollout`), recording every input token's routes.
   Rewards come from :func:`~llmsys.moe.lm.tasks.reward`; a sequence's advantage is its
   reward minus its group's mean, over the group's standard deviation plus ``1e-6``.
2. **Recompute.** The batch is cut into micro-steps of ``micro_batch_seqs`` consecutive
   sequences; each runs a no-grad forward that *replays* the recorded routes and yields the
   old log-probs used by the update.
3. **Update.** The batch is cut into ``mini_batches`` optimizer steps; each mini-batch is
   several micro-steps of gradient accumulation. Each micro-step replays the recorded
   routes (live router scores, so the router still learns), computes the clipped PPO
   surrogate on response tokens (token-mean over the mini-batch) plus the auxiliary
   balancing loss, and accumulates gradients; the optimizer steps once per mini-batch.

With ``replay=False`` the recompute and update stages route afresh (top-k of the live
router), which is what goes wrong without replay: after the first optimizer step routes
no longer match the rollout's. Every stage's per-micro-step expert loads (valid tokens
only) go into the returned :class:`StepRecord`, the rows of a routing trace.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from llmsys.core.errors import ConfigError
from llmsys.moe.lm.model import MoELM, RouteMode
from llmsys.moe.lm.rollout import Rollout, byte_logprobs, rollout
from llmsys.moe.lm.tasks import make_problem, reward


@dataclass(frozen=True, slots=True)
class RLConfig:
    """GRPO settings (defaults produce the shipped trace).

    Raises:
        ConfigError: a count is not positive, or the batch does not split evenly into
            mini-batches and micro-steps.
    """

    steps: int = 10
    """RL steps."""
    prompts_per_step: int = 8
    """Distinct problems per step."""
    group_size: int = 8
    """Responses sampled per problem (GRPO group)."""
    micro_batch_seqs: int = 4
    """Sequences per micro-step (gradient accumulation)."""
    mini_batches: int = 2
    """Optimizer steps per RL step."""
    shots: int = 4
    """Solved examples before each question."""
    ops: str = "+"
    """Operations the problems draw from (RL data is narrow: addition by default)."""
    max_operand: int = 20
    """Largest operand of a problem (small enough that the pre-trained model earns reward)."""
    max_new_tokens: int = 6
    """Longest response."""
    temperature: float = 1.0
    """Sampling temperature of the rollout."""
    lr: float = 1e-4
    """Adam learning rate."""
    clip_eps: float = 0.2
    """PPO ratio clip."""
    aux_loss_coef: float = 0.01
    """Weight of the router's balancing loss in the update."""
    replay: bool = True
    """Replay the rollout's routes in recompute and update."""
    seed: int = 0
    """Seed of problems and sampling."""
    threads: int = 1
    """torch intra-op threads."""

    def __post_init__(self) -> None:
        for name in (
            "steps",
            "prompts_per_step",
            "group_size",
            "micro_batch_seqs",
            "mini_batches",
            "max_new_tokens",
            "threads",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"RLConfig.{name} must be >= 1")
        if self.shots < 0 or not self.temperature > 0 or not self.lr > 0:
            raise ConfigError("RLConfig.shots must be >= 0, temperature and lr > 0")
        if not 0 < self.clip_eps < 1 or self.aux_loss_coef < 0:
            raise ConfigError("RLConfig.clip_eps must be in (0, 1) and aux_loss_coef >= 0")
        if (
            not self.ops
            or any(op not in "+-*" for op in self.ops)
            or not 1 <= self.max_operand <= 99
        ):
            raise ConfigError(
                "RLConfig.ops must be a non-empty string of + - * and max_operand in [1, 99]"
            )
        per_mini, rem = divmod(self.batch_seqs, self.mini_batches)
        if rem or per_mini % self.micro_batch_seqs:
            raise ConfigError(
                f"{self.batch_seqs} sequences do not split into {self.mini_batches} "
                f"mini-batches of whole {self.micro_batch_seqs}-sequence micro-steps"
            )

    @property
    def batch_seqs(self) -> int:
        """Sequences per RL step."""
        return self.prompts_per_step * self.group_size

    @property
    def micro_steps(self) -> int:
        """Micro-steps per stage per RL step."""
        return self.batch_seqs // self.micro_batch_seqs


@dataclass(frozen=True, slots=True)
class StepRecord:
    """What one RL step did and routed."""

    rewards: npt.NDArray[np.float64]
    """``[batch_seqs]`` reward of each sampled response."""
    loads: npt.NDArray[np.int64]
    """``[2, micro_steps, layers, experts]`` valid tokens routed per expert in the
    recompute (0) and update (1) stages."""
    rollout: Rollout
    """The sampled batch with its recorded routes."""
    route_mismatch: tuple[float, float]
    """Share of valid (token, layer) routes in recompute and update that differ from
    the rollout's (0 under replay)."""
    stage_wall_s: tuple[float, float, float]
    """Wall time of rollout, recompute and update."""
    logprob_max_abs_diff: float
    """Largest ``|recompute - rollout|`` log-prob over response tokens."""


def _loads(routes: torch.Tensor, valid: torch.Tensor, num_experts: int) -> npt.NDArray[np.int64]:
    """``[layers, experts]`` counts of ``routes [b, t, L, k]`` over valid positions."""
    r = routes[valid]  # [n, L, k]
    layers = r.shape[1]
    offs = torch.arange(layers, device=r.device).view(1, layers, 1) * num_experts
    counts = torch.bincount((r + offs).reshape(-1), minlength=layers * num_experts)
    return counts.view(layers, num_experts).numpy().astype(np.int64)


def _mismatch(used: torch.Tensor, recorded: torch.Tensor, valid: torch.Tensor) -> tuple[int, int]:
    a = used[valid].sort(dim=-1).values
    b = recorded[valid].sort(dim=-1).values
    diff = (a != b).any(dim=-1)
    return int(diff.sum()), int(diff.numel())


def _token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Log-probabilities of ``targets`` under the sampling distribution (same temperature)."""
    byte_targets = targets.clamp(max=255)  # special-id targets (padding) score 0, never -inf
    lp = byte_logprobs(logits, temperature).gather(-1, byte_targets.unsqueeze(-1)).squeeze(-1)
    return torch.where(targets < 256, lp, torch.zeros_like(lp))


def policy_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    clip_eps: float,
    temperature: float,
    n_tokens: int,
) -> torch.Tensor:
    """One micro-step's clipped PPO surrogate (negated), summed over ``loss_mask`` tokens
    and divided by the mini-batch's ``n_tokens``; ``advantages`` is one per sequence."""
    new_lp = _token_logprobs(logits, targets, temperature)
    ratio = torch.exp(new_lp - old_logprobs)
    a = advantages.unsqueeze(1)
    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)
    return -(surrogate * loss_mask).sum() / n_tokens


def rl_step(
    model: MoELM,
    opt: torch.optim.Optimizer,
    cfg: RLConfig,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> StepRecord:
    """Run one GRPO step in place on ``model`` and ``opt`` (see the module docstring)."""
    e = model.cfg.num_experts
    t0 = time.perf_counter()
    problems = [
        make_problem(rng, cfg.shots, cfg.ops, cfg.max_operand) for _ in range(cfg.prompts_per_step)
    ]
    prompts = [p.prompt for p in problems for _ in range(cfg.group_size)]
    ro = rollout(model, prompts, cfg.max_new_tokens, generator, cfg.temperature)
    rewards = np.array(
        [
            reward(text, problems[i // cfg.group_size].answer)
            for i, text in enumerate(ro.responses())
        ]
    )
    grouped = rewards.reshape(cfg.prompts_per_step, cfg.group_size)
    adv = (grouped - grouped.mean(1, keepdims=True)) / (grouped.std(1, keepdims=True) + 1e-6)
    advantages = torch.tensor(adv.reshape(-1), dtype=torch.float32)
    t1 = time.perf_counter()
    inputs, in_valid = ro.inputs
    targets = ro.tokens[:, 1:]
    resp = ro.response_mask[:, 1:]
    mode = RouteMode.REPLAY if cfg.replay else RouteMode.RECORD
    loads = np.zeros((2, cfg.micro_steps, model.cfg.num_layers, e), dtype=np.int64)
    mism = [[0, 0], [0, 0]]
    old_lp = torch.zeros_like(targets, dtype=torch.float32)
    m = cfg.micro_batch_seqs
    model.eval()
    with torch.no_grad():
        for micro in range(cfg.micro_steps):
            sl = slice(micro * m, (micro + 1) * m)
            out = model(inputs[sl], in_valid[sl], mode, routes=ro.routes[sl])
            old_lp[sl] = _token_logprobs(out.logits, targets[sl], cfg.temperature)
            loads[0, micro] = _loads(out.routes, in_valid[sl], e)
            bad, tot = _mismatch(out.routes, ro.routes[sl], in_valid[sl])
            mism[0][0] += bad
            mism[0][1] += tot
    lp_diff = float((old_lp - ro.old_logprobs[:, 1:]).abs()[resp].max()) if resp.any() else 0.0
    t2 = time.perf_counter()
    model.train()
    per_mini = cfg.micro_steps // cfg.mini_batches
    for mini in range(cfg.mini_batches):
        micros = range(mini * per_mini, (mini + 1) * per_mini)
        n_tokens = max(
            1, int(sum(int(resp[micro * m : (micro + 1) * m].sum()) for micro in micros))
        )
        opt.zero_grad(set_to_none=True)
        for micro in micros:
            sl = slice(micro * m, (micro + 1) * m)
            out = model(inputs[sl], in_valid[sl], mode, routes=ro.routes[sl])
            loss = policy_loss(
                out.logits,
                targets[sl],
                old_lp[sl],
                advantages[sl],
                resp[sl],
                cfg.clip_eps,
                cfg.temperature,
                n_tokens,
            )
            loss = loss + cfg.aux_loss_coef * out.aux_loss / per_mini
            loss.backward()
            loads[1, micro] = _loads(out.routes, in_valid[sl], e)
            bad, tot = _mismatch(out.routes.detach(), ro.routes[sl], in_valid[sl])
            mism[1][0] += bad
            mism[1][1] += tot
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    t3 = time.perf_counter()
    return StepRecord(
        rewards=rewards,
        loads=loads,
        rollout=ro,
        route_mismatch=(mism[0][0] / max(1, mism[0][1]), mism[1][0] / max(1, mism[1][1])),
        stage_wall_s=(t1 - t0, t2 - t1, t3 - t2),
        logprob_max_abs_diff=lp_diff,
    )
