"""Deterministic pre-training of the tiny MoE language model on local text.

Protocol
--------
:func:`pretrain` builds the :mod:`~llmsys.moe.lm.corpus`, seeds torch and numpy from
:attr:`TrainConfig.seed`, fixes torch's thread count, and runs AdamW on next-byte
cross-entropy plus the router's auxiliary balancing loss, with linear warm-up and cosine
decay. Same machine files, seed and thread count give the same checkpoint. A callback
receives a :class:`TrainLog` after each logged step (the CLI draws a progress bar from it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from llmsys.core.errors import ConfigError
from llmsys.core.provenance import git_sha
from llmsys.moe.lm.checkpoint import save_checkpoint
from llmsys.moe.lm.config import MoEConfig
from llmsys.moe.lm.corpus import Corpus, build_corpus
from llmsys.moe.lm.model import MoELM


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Pre-training settings (defaults produce the shipped checkpoint).

    Raises:
        ConfigError: a count or rate is not positive.
    """

    steps: int = 700
    """Optimizer steps."""
    batch: int = 16
    """Windows per step."""
    seq_tokens: int = 256
    """Bytes per window."""
    lr: float = 2e-3
    """Peak learning rate."""
    warmup_steps: int = 50
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    max_bytes_per_domain: int = 4 << 20
    """Corpus bytes per domain."""
    threads: int = 1
    """torch intra-op threads (part of what makes a run reproducible; one thread also keeps
    a shared 2-core machine from oversubscription, which slowed a 2-thread run 40x)."""
    seed: int = 0
    """Seed of the model init, corpus generation and window sampling."""
    log_every: int = 20
    """Steps between :class:`TrainLog` callbacks."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "seq_tokens", "warmup_steps", "threads", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ConfigError("TrainConfig.lr must be > 0 and weight_decay >= 0")


@dataclass(frozen=True, slots=True)
class TrainLog:
    """Progress of a pre-training run."""

    step: int
    """Steps done."""
    loss: float
    """Mean next-byte cross-entropy (nats) over the last logging window."""
    aux_loss: float
    """Mean auxiliary balancing loss over the window."""
    elapsed_s: float
    """Wall time since the start."""


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def pretrain(
    model_cfg: MoEConfig | None = None,
    cfg: TrainConfig | None = None,
    corpus: Corpus | None = None,
    on_log: Callable[[TrainLog], None] | None = None,
) -> tuple[MoELM, list[TrainLog], dict[str, object]]:
    """Train a model from scratch; returns ``(model, logs, provenance)``."""
    mcfg = model_cfg if model_cfg is not None else MoEConfig()
    tcfg = cfg if cfg is not None else TrainConfig()
    torch.set_num_threads(tcfg.threads)
    torch.manual_seed(tcfg.seed)
    data = corpus if corpus is not None else build_corpus(tcfg.max_bytes_per_domain, seed=tcfg.seed)
    rng = np.random.default_rng(tcfg.seed)
    model = MoELM(mcfg)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": tcfg.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ],
        lr=tcfg.lr,
        betas=(0.9, 0.95),
    )
    logs: list[TrainLog] = []
    window_loss = window_aux = 0.0
    start = time.perf_counter()
    for step in range(tcfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(tcfg, step)
        rows, _ = data.sample(rng, tcfg.batch, tcfg.seq_tokens + 1)
        batch = torch.from_numpy(rows)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        out = model(inputs, torch.ones_like(inputs, dtype=torch.bool))
        ce = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), targets.reshape(-1))
        loss = ce + mcfg.aux_loss_coef * out.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        window_loss += float(ce.detach())
        window_aux += float(out.aux_loss.detach())
        if (step + 1) % tcfg.log_every == 0 or step + 1 == tcfg.steps:
            n = (step % tcfg.log_every) + 1
            log = TrainLog(step + 1, window_loss / n, window_aux / n, time.perf_counter() - start)
            logs.append(log)
            window_loss = window_aux = 0.0
            if on_log is not None:
                on_log(log)
    model.eval()
    provenance: dict[str, object] = {
        "train": asdict(tcfg),
        "corpus_bytes": {d.value: len(s) for d, s in data.streams.items()},
        "corpus_missing": [d.value for d in data.missing],
        "final_loss": logs[-1].loss if logs else None,
        "train_wall_s": time.perf_counter() - start,
    }
    return model, logs, provenance


def train_checkpoint(
    path: Path,
    model_cfg: MoEConfig | None = None,
    cfg: TrainConfig | None = None,
    on_log: Callable[[TrainLog], None] | None = None,
) -> list[TrainLog]:
    """Pre-train with :func:`pretrain` and save the checkpoint to ``path`` (what
    ``llmsys moe train`` runs; its defaults reproduce the shipped checkpoint)."""
    model, logs, provenance = pretrain(model_cfg, cfg, on_log=on_log)
    provenance["git_sha"] = git_sha()
    provenance["logs"] = [asdict(log) for log in logs]
    save_checkpoint(model, path, provenance)
    return logs
