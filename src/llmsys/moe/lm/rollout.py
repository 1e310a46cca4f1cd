"""Rollout: batched sampling with a KV cache, recording every token's routed experts.

Protocol
--------
The rollout encodes each prompt as its bytes (pre-training windows start mid-stream and
never hold :data:`BOS`, so a prompt does not either), left-pads the batch with
:data:`PAD` to a common prompt length ``P``, prefills once, then decodes up to
``max_new_tokens`` tokens per sequence, one step at a time. A sequence finishes when it
samples a newline; afterwards it is fed :data:`PAD` marked invalid. Each step feeds the
token just sampled, so the returned :class:`Rollout` holds, for every input position
``0 .. P + N - 2`` (``N`` decode steps), the token, whether it is valid, and the routes
the model chose for it - exactly what recompute and update replay. ``old_logprobs[b, j]``
is the rollout log-probability of token ``tokens[b, j]`` for response positions ``j >= P``
(``response_mask``), computed from the logits at ``j - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmsys.core.errors import InputError
from llmsys.moe.lm.config import PAD
from llmsys.moe.lm.model import KVCache, MoELM, RouteMode

NEWLINE = ord("\n")


@dataclass(frozen=True, slots=True)
class Rollout:
    """Sequences sampled by :func:`rollout`, with their recorded routes."""

    tokens: torch.Tensor
    """``[batch, P + N]`` prompt (left-padded) then response ids."""
    valid: torch.Tensor
    """``[batch, P + N]`` real tokens (prompt bytes, response up to its newline)."""
    response_mask: torch.Tensor
    """``[batch, P + N]`` sampled tokens that count in the policy loss."""
    old_logprobs: torch.Tensor
    """``[batch, P + N]`` rollout log-probability of each response token (0 elsewhere)."""
    routes: torch.Tensor
    """``[batch, P + N - 1, layers, top_k]`` experts of each *input* position."""
    prompt_tokens: int
    """``P``: width of the left-padded prompt block."""

    @property
    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens, valid)`` of the input positions a replayed forward runs."""
        return self.tokens[:, :-1], self.valid[:, :-1]

    def responses(self) -> list[str]:
        """Each sequence's response text (up to and including its newline)."""
        out = []
        for row, mask in zip(self.tokens, self.response_mask, strict=True):
            ids = row[mask].tolist()
            out.append(bytes(i for i in ids if i < 256).decode("utf-8", errors="replace"))
        return out


def byte_logprobs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probabilities over the vocabulary with the special ids (>= 256) excluded: a
    response is bytes, so PAD/BOS/EOS can never be sampled or become a target."""
    scaled = logits.float() / temperature
    scaled[..., 256:] = float("-inf")
    return torch.log_softmax(scaled, dim=-1)


def encode_prompts(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``(tokens, valid)`` of each prompt's bytes."""
    if not prompts:
        raise InputError("rollout needs at least one prompt")
    rows = [list(p.encode()) for p in prompts]
    if any(not r for r in rows):
        raise InputError("prompts must not be empty")
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), PAD, dtype=torch.long)
    valid = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        tokens[i, width - len(r) :] = torch.tensor(r)
        valid[i, width - len(r) :] = True
    return tokens, valid


@torch.no_grad()
def rollout(
    model: MoELM,
    prompts: list[str],
    max_new_tokens: int,
    generator: torch.Generator,
    temperature: float = 1.0,
) -> Rollout:
    """Sample a response per prompt (see the module docstring).

    Raises:
        InputError: no prompts, ``max_new_tokens < 1`` or ``temperature <= 0``.
    """
    if max_new_tokens < 1 or not temperature > 0:
        raise InputError("max_new_tokens must be >= 1 and temperature > 0")
    model.eval()
    tokens, valid = encode_prompts(prompts)
    b, p = tokens.shape
    cache = KVCache()
    out = model(tokens, valid, RouteMode.RECORD, cache=cache)
    routes = [out.routes]
    logits = out.logits[:, -1]
    all_tokens, all_valid = [tokens], [valid]
    all_resp, all_lp = [torch.zeros_like(valid)], [torch.zeros(b, p)]
    finished = torch.zeros(b, dtype=torch.bool)
    for step in range(max_new_tokens):
        logp = byte_logprobs(logits, temperature)
        nxt = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
        live = ~finished
        nxt = torch.where(live, nxt, torch.full_like(nxt, PAD))
        all_tokens.append(nxt.unsqueeze(1))
        all_valid.append(live.unsqueeze(1))
        all_resp.append(live.unsqueeze(1))
        picked = logp.gather(1, nxt.unsqueeze(1)).squeeze(1)
        all_lp.append(torch.where(live, picked, 0.0).unsqueeze(1))
        finished = finished | (nxt == NEWLINE)
        if step + 1 == max_new_tokens or bool(finished.all()):
            break
        out = model(nxt.unsqueeze(1), live.unsqueeze(1), RouteMode.RECORD, cache=cache)
        routes.append(out.routes)
        logits = out.logits[:, -1]
    return Rollout(
        tokens=torch.cat(all_tokens, dim=1),
        valid=torch.cat(all_valid, dim=1),
        response_mask=torch.cat(all_resp, dim=1),
        old_logprobs=torch.cat(all_lp, dim=1).to(torch.float32),
        routes=torch.cat(routes, dim=1),
        prompt_tokens=p,
    )
