"""Driving a GRPO run and turning its steps into a recorded routing trace.

Protocol
--------
:func:`run_rl` seeds numpy and torch from :attr:`RLConfig.seed`, fixes the thread count,
builds one Adam optimizer and calls :func:`~llmsys.moe.lm.grpo.rl_step` ``cfg.steps``
times, reporting each :class:`StepRecord` to an optional callback (the CLI's progress bar).
It returns the records and the :class:`RecordedRun` assembled from them (per-micro-step
loads of both stages, per-token rollout routes, rewards), ready to save.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from llmsys.core.errors import InputError
from llmsys.moe.lm.grpo import RLConfig, StepRecord, rl_step
from llmsys.moe.lm.model import MoELM
from llmsys.moe.lm.recorded import RecordedRun
from llmsys.moe.lm.rollout import rollout
from llmsys.moe.lm.tasks import make_problem, reward
from llmsys.moe.tracegen import RoutingTrace, Stage


@dataclass(frozen=True, slots=True)
class RLResult:
    """What :func:`run_rl` produced."""

    records: list[StepRecord]
    """One record per RL step."""
    run: RecordedRun
    """The routing trace of the run."""

    @property
    def mean_rewards(self) -> list[float]:
        """Mean rollout reward per step."""
        return [float(r.rewards.mean()) for r in self.records]


def assemble(records: list[StepRecord], cfg: RLConfig, model: MoELM) -> RecordedRun:
    """Stack step records into a :class:`RecordedRun` (inputs padded to the widest step)."""
    width = max(r.rollout.routes.shape[1] for r in records)
    steps, seqs = len(records), cfg.batch_seqs
    layers, k = model.cfg.num_layers, model.cfg.top_k
    if model.cfg.num_experts > 256:
        raise InputError("recorded traces store routes as uint8: at most 256 experts")
    routes = np.zeros((steps, seqs, width, layers, k), dtype=np.uint8)
    valid = np.zeros((steps, seqs, width), dtype=np.bool_)
    tokens = np.zeros((steps, seqs, width), dtype=np.int16)
    for s, rec in enumerate(records):
        inp, ok = rec.rollout.inputs
        w = inp.shape[1]
        routes[s, :, :w] = rec.rollout.routes.numpy().astype(np.uint8)
        valid[s, :, :w] = ok.numpy()
        tokens[s, :, :w] = inp.numpy().astype(np.int16)
    loads = np.stack([r.loads for r in records])
    tokens_per_micro = round(float(valid.sum()) / (steps * cfg.micro_steps))
    trace = RoutingTrace(loads, (Stage.RECOMPUTE, Stage.UPDATE), model.cfg.shape, tokens_per_micro)
    return RecordedRun(
        trace=trace,
        routes=routes,
        valid=valid,
        tokens=tokens,
        rewards=np.stack([r.rewards for r in records]).astype(np.float32),
        seqs_per_micro=cfg.micro_batch_seqs,
        group_size=cfg.group_size,
        replayed=cfg.replay,
    )


def run_rl(
    model: MoELM,
    cfg: RLConfig | None = None,
    on_step: Callable[[int, StepRecord], None] | None = None,
) -> RLResult:
    """Post-train ``model`` in place with GRPO (see the module docstring)."""
    c = cfg if cfg is not None else RLConfig()
    torch.set_num_threads(c.threads)
    torch.manual_seed(c.seed)
    rng = np.random.default_rng(c.seed)
    gen = torch.Generator().manual_seed(c.seed)
    opt = torch.optim.Adam(model.parameters(), lr=c.lr, betas=(0.9, 0.99))
    records: list[StepRecord] = []
    for step in range(c.steps):
        rec = rl_step(model, opt, c, rng, gen)
        records.append(rec)
        if on_step is not None:
            on_step(step, rec)
    return RLResult(records, assemble(records, c, model))


def evaluate_reward(
    model: MoELM, cfg: RLConfig | None = None, problems: int = 256, seed: int = 12345
) -> float:
    """Mean reward of one sampled response to each of ``problems`` fixed problems drawn
    like ``cfg``'s (task, shots, temperature).

    The problems and the sampling generator depend only on ``seed``, so the figure is
    comparable before and after training.
    """
    c = cfg if cfg is not None else RLConfig()
    rng = np.random.default_rng(seed)
    batch = [make_problem(rng, c.shots, c.ops, c.max_operand) for _ in range(problems)]
    gen = torch.Generator().manual_seed(seed)
    ro = rollout(model, [p.prompt for p in batch], c.max_new_tokens, gen, c.temperature)
    return float(np.mean([reward(t, p.answer) for t, p in zip(ro.responses(), batch, strict=True)]))
