"""A small MoE decoder language model with router record and replay.

Protocol
--------
:class:`MoELM` is a pre-norm decoder: byte embeddings plus learned absolute positions,
``num_layers`` blocks of (causal multi-head attention, MoE SwiGLU FFN), a final RMSNorm and
an output head tied to the embeddings.

Routing. Each :class:`MoELayer` has a linear router; ``probs = softmax(router(x))``. In
:attr:`RouteMode.RECORD` a token goes to the ``top_k`` experts of largest probability; in
:attr:`RouteMode.REPLAY` it goes to the experts the caller passes (recorded earlier), and the
combine weights are the *live* router probabilities gathered at those experts and
renormalised over them - the router keeps receiving gradients while routes stay fixed
(Megatron's RECORD / REPLAY_FORWARD / REPLAY_BACKWARD; the backward of a replayed forward
is ordinary autograd through the gathered scores). Both modes compute the same weights from
the same indices, so replaying a recorded forward with unchanged weights is bitwise equal.

Every forward returns the routes it used, ``[batch, tokens, layers, top_k]`` (int64), and
the auxiliary balancing loss over valid tokens. Invalid (padding) tokens are routed like
any other but never attended to, never targets, and not counted in loads or the aux loss.

Incremental decoding uses a :class:`KVCache`: a prefill call fills it, each decode call
appends one token per sequence.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from llmsys.core.errors import InputError
from llmsys.moe.lm.config import Balance, MoEConfig


class RouteMode(enum.Enum):
    """How MoE layers choose experts."""

    RECORD = "record"
    """Top-k of the live router probabilities; the routes are returned."""
    REPLAY = "replay"
    """Use the caller's routes; weights gathered from the live router probabilities."""


@dataclass(frozen=True, slots=True)
class ForwardOut:
    """Result of :meth:`MoELM.forward`."""

    logits: torch.Tensor
    """``[batch, tokens, vocab]`` next-token logits."""
    routes: torch.Tensor
    """``[batch, tokens, layers, top_k]`` experts each token was routed to."""
    aux_loss: torch.Tensor
    """Scalar auxiliary balancing loss summed over layers (0 when balancing is off)."""


@dataclass(slots=True)
class KVCache:
    """Keys and values of the tokens seen so far, per layer, for incremental decoding."""

    keys: list[torch.Tensor] = field(default_factory=list)
    """Per layer ``[batch, heads, tokens, head_dim]``."""
    values: list[torch.Tensor] = field(default_factory=list)
    """Per layer ``[batch, heads, tokens, head_dim]``."""
    key_valid: torch.Tensor | None = None
    """``[batch, tokens]`` which cached positions may be attended to."""
    next_pos: torch.Tensor | None = None
    """``[batch]`` position id of each sequence's next token."""


def expert_forward(
    h: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor
) -> torch.Tensor:
    """One SwiGLU expert: ``(silu(h @ w1) * (h @ w3)) @ w2`` for ``h`` of shape ``[n, hidden]``."""
    return (F.silu(h @ w1) * (h @ w3)) @ w2


class RMSNorm(nn.Module):
    """Root-mean-square layer norm with a learned scale."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def route_tokens(
    router: nn.Module, x: torch.Tensor, routes: torch.Tensor | None, top_k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(probs [n, E], routes [n, k], combine weights [n, k])`` for tokens ``x [n, d]``.

    ``routes`` None records (top-k of the live scores); given routes are replayed, their
    weights gathered from the live scores, so the router keeps its gradient. The one
    routing rule of the reference layer and the expert-parallel layer.
    """
    probs = torch.softmax(router(x), dim=-1)
    if routes is None:
        routes = torch.topk(probs, top_k, dim=-1).indices
    picked = probs.gather(1, routes)
    return probs, routes, picked / picked.sum(dim=-1, keepdim=True)


class MoELayer(nn.Module):
    """Router plus ``num_experts`` SwiGLU experts stored as stacked weight tensors."""

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        e, d, f = cfg.num_experts, cfg.hidden, cfg.expert_ffn
        self.cfg = cfg
        self.router = nn.Linear(d, e, bias=False)
        self.w1 = nn.Parameter(torch.randn(e, d, f) / math.sqrt(d))
        self.w3 = nn.Parameter(torch.randn(e, d, f) / math.sqrt(d))
        self.w2 = nn.Parameter(torch.randn(e, f, d) / math.sqrt(f) / math.sqrt(2 * cfg.num_layers))
        self.shared: nn.ModuleList | None = None
        if cfg.shared_expert:
            self.shared = nn.ModuleList(
                [
                    nn.Linear(d, f, bias=False),
                    nn.Linear(d, f, bias=False),
                    nn.Linear(f, d, bias=False),
                ]
            )

    def route(
        self, x: torch.Tensor, routes: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(probs [n, E], routes [n, k], combine weights [n, k])`` for tokens ``x [n, d]``."""
        return route_tokens(self.router, x, routes, self.cfg.top_k)

    def forward(
        self, x: torch.Tensor, routes: torch.Tensor | None, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Route and run tokens ``x [n, d]``; returns ``(y, routes, aux_loss)``."""
        e = self.cfg.num_experts
        probs, routes, weights = self.route(x, routes)
        flat = routes.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=e).tolist()
        tok = order // self.cfg.top_k
        xs = x[tok]
        outs: list[torch.Tensor] = []
        start = 0
        # unbind once: indexing w[e] per expert would materialise a full-size zero gradient
        # per expert in backward; unbind's backward is one stack
        w1s, w3s, w2s = self.w1.unbind(0), self.w3.unbind(0), self.w2.unbind(0)
        for expert, count in enumerate(counts):
            if count:
                h = xs[start : start + count]
                outs.append(expert_forward(h, w1s[expert], w3s[expert], w2s[expert]))
                start += count
        ys = torch.cat(outs) * weights.reshape(-1)[order].unsqueeze(-1)
        y = torch.zeros_like(x).index_add_(0, tok, ys)
        if self.shared is not None:
            g, u, dn = self.shared
            y = y + dn(F.silu(g(x)) * u(x))
        aux = x.new_zeros(())
        if self.cfg.balance is Balance.AUX_LOSS and self.training and bool(valid.any()):
            v = valid.to(x.dtype)
            n_valid = v.sum()
            share = torch.zeros(e, dtype=x.dtype, device=x.device).index_add_(
                0, flat, v.repeat_interleave(self.cfg.top_k)
            ) / (n_valid * self.cfg.top_k)
            mean_prob = (probs * v.unsqueeze(-1)).sum(0) / n_valid
            aux = e * (share.detach() * mean_prob).sum()
        return y, routes, aux


class Attention(nn.Module):
    """Causal multi-head self-attention with an optional KV cache."""

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden, bias=False)
        self.out = nn.Linear(cfg.hidden, cfg.hidden, bias=False)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, cache: KVCache | None, layer: int
    ) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            if len(cache.keys) > layer:
                k = torch.cat([cache.keys[layer], k], dim=2)
                v = torch.cat([cache.values[layer], v], dim=2)
                cache.keys[layer], cache.values[layer] = k, v
            else:
                cache.keys.append(k)
                cache.values.append(v)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1))
        out: torch.Tensor = self.out(o.transpose(1, 2).reshape(b, t, d))
        return out


class Block(nn.Module):
    """Pre-norm attention then MoE FFN, both residual."""

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.hidden)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.hidden)
        self.moe = MoELayer(cfg)


class MoELM(nn.Module):
    """The MoE decoder; see the module docstring for the routing protocol."""

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(256 + 4, cfg.hidden)
        self.pos_emb = nn.Embedding(cfg.max_seq_tokens, cfg.hidden)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden)

    def forward(
        self,
        tokens: torch.Tensor,
        valid: torch.Tensor,
        mode: RouteMode = RouteMode.RECORD,
        routes: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> ForwardOut:
        """Run ``tokens [batch, t]`` whose ``valid [batch, t]`` marks non-padding.

        With ``cache`` empty this is a prefill that fills it; with ``cache`` filled,
        ``tokens`` are the next ``t`` tokens of each sequence.

        Raises:
            InputError: shapes disagree, replay without routes, or too many tokens.
        """
        if tokens.ndim != 2 or valid.shape != tokens.shape:
            raise InputError("tokens and valid must both be [batch, tokens]")
        b, t = tokens.shape
        cfg = self.cfg
        want = (b, t, cfg.num_layers, cfg.top_k)
        if mode is RouteMode.REPLAY:
            if routes is None or routes.shape != want or routes.dtype != torch.long:
                raise InputError(f"replay needs int64 routes of shape {want}")
            if routes.numel() and (int(routes.min()) < 0 or int(routes.max()) >= cfg.num_experts):
                raise InputError(f"replay routes must name experts in [0, {cfg.num_experts})")
        prefix = 0 if cache is None or cache.key_valid is None else cache.key_valid.shape[1]
        if prefix == 0:
            pos = (valid.long().cumsum(1) - 1).clamp(min=0)
            key_valid = valid
        else:
            assert cache is not None and cache.next_pos is not None and cache.key_valid is not None
            pos = cache.next_pos.unsqueeze(1) + (valid.long().cumsum(1) - 1).clamp(min=0)
            key_valid = torch.cat([cache.key_valid, valid], dim=1)
        if int(pos.max()) >= cfg.max_seq_tokens:
            raise InputError(f"sequence longer than max_seq_tokens={cfg.max_seq_tokens}")
        dev = tokens.device
        causal = torch.ones(t, prefix + t, dtype=torch.bool, device=dev).tril(diagonal=prefix)
        mask = causal.unsqueeze(0) & key_valid.unsqueeze(1)
        diag = torch.zeros(t, prefix + t, dtype=torch.bool, device=dev)
        rows = torch.arange(t, device=dev)
        diag[rows, prefix + rows] = True
        mask = mask | diag.unsqueeze(0)  # a padding query sees itself, never an empty row
        if cache is not None:
            cache.key_valid = key_valid
            cache.next_pos = pos[:, -1] + valid[:, -1].long()
        x = self.tok_emb(tokens) + self.pos_emb(pos)
        flat_valid = valid.reshape(-1)
        used: list[torch.Tensor] = []
        aux = x.new_zeros(())
        for i, blk in enumerate(cast(list[Block], self.blocks)):
            x = x + blk.attn(blk.norm1(x), mask, cache, i)
            r = (
                None
                if routes is None or mode is RouteMode.RECORD
                else routes[:, :, i].reshape(-1, cfg.top_k)
            )
            y, r_used, a = blk.moe(blk.norm2(x).reshape(b * t, -1), r, flat_valid)
            x = x + y.view(b, t, -1)
            used.append(r_used.view(b, t, cfg.top_k))
            aux = aux + a
        logits = self.norm(x) @ self.tok_emb.weight.T
        return ForwardOut(logits, torch.stack(used, dim=2), aux)
