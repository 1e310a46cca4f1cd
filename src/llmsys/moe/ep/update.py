"""The GRPO policy update on an expert-parallel model, planned per micro-step.

Protocol
--------
The rollout has recorded every token's routes, so before the update starts the whole
batch's per-micro-step loads are known. :func:`plan_update` cuts an :class:`UpdateBatch`
into ``mini_batches`` optimizer steps of micro-steps of ``micro_batch_seqs`` sequences
(the same cut as :func:`llmsys.moe.lm.grpo.rl_step`) and gives each micro-step a placement
from the chosen policy - ``plan_foremoe`` with the homes pinned (each placement chained to
the previous one, so few replicas move), or ``plan_static``. Every rank computes the same
plan (pure functions of the same arrays), so no plan is sent anywhere.

:func:`run_update` runs it: per mini-batch, the :class:`~llmsys.moe.ep.executor.Executor`
accumulates the clipped PPO surrogate (token mean over the mini-batch's response tokens,
all ranks together) plus the auxiliary balancing loss, while its transfer engine moves the
next micro-step's replicas; then the global gradient norm is clipped
(:func:`clip_grad_norm`) and the optimizer steps - over home experts and replicated
parameters only, so optimizer state lives at home. The loss is the one ``rl_step`` uses,
written out here because ``rl_step`` runs rollout, recompute and update in one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist

from llmsys.core.errors import ConfigError, InputError
from llmsys.moe.baselines import plan_static
from llmsys.moe.ep.executor import Executor, LossFn, MicroStep, MinibatchStats, rank_counts
from llmsys.moe.lm.grpo import policy_loss
from llmsys.moe.lm.model import ForwardOut
from llmsys.moe.placement import Placement, Policy
from llmsys.moe.planner import plan_foremoe
from llmsys.moe.topology import HomeLayout


class OptimizerLike(Protocol):
    """What :func:`run_update` needs of an optimizer (``torch.optim.Adam`` qualifies)."""

    def zero_grad(self, set_to_none: bool = ...) -> None: ...

    def step(self) -> object: ...


@dataclass(frozen=True, slots=True)
class UpdateBatch:
    """One RL step's batch as the update stage reads it (all sequences of the group).

    Raises:
        InputError: shapes disagree.
    """

    inputs: torch.Tensor
    """``[seqs, T]`` input token ids."""
    valid: torch.Tensor
    """``[seqs, T]`` real input tokens."""
    targets: torch.Tensor
    """``[seqs, T]`` next token of each input position."""
    loss_mask: torch.Tensor
    """``[seqs, T]`` positions whose target counts in the policy loss (response tokens)."""
    routes: torch.Tensor
    """``[seqs, T, layers, top_k]`` routes recorded in the rollout (int64)."""
    old_logprobs: torch.Tensor
    """``[seqs, T]`` log-probability of each target under the recompute stage."""
    advantages: torch.Tensor
    """``[seqs]`` group-normalised advantage of each sequence."""

    def __post_init__(self) -> None:
        shape = self.inputs.shape
        for name in ("valid", "targets", "loss_mask", "old_logprobs"):
            if getattr(self, name).shape != shape:
                raise InputError(f"UpdateBatch.{name} must be {tuple(shape)}")
        if self.routes.shape[:2] != shape or self.advantages.shape != shape[:1]:
            raise InputError("UpdateBatch.routes and advantages disagree with inputs")


@dataclass(frozen=True, slots=True)
class UpdateConfig:
    """Settings of the update stage (defaults as :class:`~llmsys.moe.lm.grpo.RLConfig`).

    Raises:
        ConfigError: a count is not positive, or the policy is not static or foremoe.
    """

    micro_batch_seqs: int = 4
    """Sequences per micro-step."""
    mini_batches: int = 2
    """Optimizer steps per RL step."""
    clip_eps: float = 0.2
    """PPO ratio clip."""
    temperature: float = 1.0
    """Sampling temperature of the rollout (log-probs are taken at it, as in ``rl_step``)."""
    aux_loss_coef: float = 0.01
    """Weight of the router's balancing loss."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip."""
    policy: Policy = Policy.FOREMOE
    """Placement per micro-step: ``foremoe`` (homes pinned) or ``static``."""

    def __post_init__(self) -> None:
        if self.micro_batch_seqs < 1 or self.mini_batches < 1 or not self.max_grad_norm > 0:
            raise ConfigError("UpdateConfig counts and max_grad_norm must be positive")
        if not self.temperature > 0:
            raise ConfigError("UpdateConfig.temperature must be > 0")
        if self.policy not in (Policy.FOREMOE, Policy.STATIC):
            raise ConfigError(
                f"the update runs foremoe or static placements, not {self.policy.value}"
            )


def plan_update(batch: UpdateBatch, cfg: UpdateConfig, homes: HomeLayout) -> list[list[MicroStep]]:
    """Mini-batches of micro-steps, each with its placement (see the module docstring).

    Raises:
        ConfigError: the batch does not split into whole micro-steps and mini-batches.
    """
    seqs = batch.inputs.shape[0]
    per_mini, rem = divmod(seqs, cfg.mini_batches)
    if rem or per_mini % cfg.micro_batch_seqs:
        raise ConfigError(
            f"{seqs} sequences do not split into {cfg.mini_batches} mini-batches of whole "
            f"{cfg.micro_batch_seqs}-sequence micro-steps"
        )
    topo, world = homes.topology, homes.topology.num_gpus
    out: list[list[MicroStep]] = []
    prev: Placement | None = None
    m = cfg.micro_batch_seqs
    for mini in range(cfg.mini_batches):
        steps = []
        for start in range(mini * per_mini, (mini + 1) * per_mini, m):
            rows = slice(start, start + m)
            counts = rank_counts(batch.routes[rows], batch.valid[rows], world, homes.num_experts)
            load = counts.sum(axis=0)
            if cfg.policy is Policy.STATIC:
                placement = plan_static(load, topo)
            else:
                placement = plan_foremoe(load, topo, prev, homes=homes)
            prev = placement
            steps.append(
                MicroStep(
                    batch.inputs[rows], batch.valid[rows], batch.routes[rows], placement, counts
                )
            )
        out.append(steps)
    return out


def clip_grad_norm(executor: Executor, max_norm: float) -> float:
    """Clip every rank's gradients by the global norm (as ``clip_grad_norm_``); return it.

    Collective. Replicated parameters hold identical (all-reduced) gradients and count once;
    home experts are disjoint across ranks and are summed over the group.
    """
    expert_ids = {id(p) for layer in executor.layers for p in (layer.w1, layer.w3, layer.w2)}
    sq = torch.zeros(2, dtype=torch.float64, device=executor.layers[0].w1.device)
    for p in executor.parameters():
        if p.grad is not None:
            sq[0 if id(p) in expert_ids else 1] += p.grad.detach().double().pow(2).sum()
    experts = sq[:1].clone()
    dist.all_reduce(experts, group=executor.group)
    total = float((experts[0] + sq[1]).sqrt())
    coef = min(1.0, max_norm / (total + 1e-6))
    if coef < 1.0:
        for p in executor.parameters():
            if p.grad is not None:
                p.grad.mul_(coef)
    return total


def run_update(
    executor: Executor,
    opt: OptimizerLike,
    batch: UpdateBatch,
    cfg: UpdateConfig,
    homes: HomeLayout,
) -> list[MinibatchStats]:
    """Run the policy update of one RL step on every rank; returns each mini-batch's stats.

    Collective: every rank calls it with the same batch (each runs its own rows).
    """
    stats = []
    per_mini = batch.inputs.shape[0] // cfg.mini_batches
    for i, steps in enumerate(plan_update(batch, cfg, homes)):
        starts = [i * per_mini + j * cfg.micro_batch_seqs for j in range(len(steps))]
        mini_rows = slice(i * per_mini, (i + 1) * per_mini)
        n_tokens = max(1, int(batch.loss_mask[mini_rows].sum()))
        opt.zero_grad(set_to_none=True)
        stats.append(executor.run_minibatch(steps, _loss(batch, cfg, starts, n_tokens, len(steps))))
        clip_grad_norm(executor, cfg.max_grad_norm)
        opt.step()
    return stats


def _loss(
    batch: UpdateBatch, cfg: UpdateConfig, starts: Sequence[int], n_tokens: int, per_mini: int
) -> LossFn:
    """This rank's share of micro-step ``m`` 's loss, as ``rl_step`` computes it."""

    def loss_fn(out: ForwardOut, m: int, rows: slice) -> torch.Tensor:
        sl = slice(starts[m] + rows.start, starts[m] + rows.stop)
        loss = policy_loss(
            out.logits,
            batch.targets[sl],
            batch.old_logprobs[sl],
            batch.advantages[sl],
            batch.loss_mask[sl],
            cfg.clip_eps,
            cfg.temperature,
            n_tokens,
        )
        return loss + cfg.aux_loss_coef * out.aux_loss / per_mini

    return loss_fn
