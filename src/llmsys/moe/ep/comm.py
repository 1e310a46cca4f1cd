"""Differentiable collectives: the uneven all-to-all of dispatch and combine.

Protocol: :func:`all_to_all` sends ``in_splits[r]`` leading rows of ``x`` to rank ``r`` (in
rank order) and returns the ``out_splits[r]`` rows received from each rank ``r``,
concatenated in rank order. Its backward is the same exchange with the splits swapped, so
gradients travel back to the rows they came from. Every rank of the group must call it
with matching splits (rank ``a``'s ``in_splits[b]`` equals rank ``b``'s ``out_splits[a]``).
:func:`all_reduce_grads` sums the gradients of replicated parameters (router, dense
layers) over the group.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist

ProcessGroup = Any  # torch.distributed.ProcessGroup; typed loosely, it is a C++ binding


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        in_splits: list[int],
        out_splits: list[int],
        group: ProcessGroup | None,
    ) -> torch.Tensor:
        ctx.in_splits, ctx.out_splits, ctx.group = in_splits, out_splits, group
        return _exchange(x, in_splits, out_splits, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        return _exchange(grad, ctx.out_splits, ctx.in_splits, ctx.group), None, None, None


def _exchange(
    x: torch.Tensor, in_splits: list[int], out_splits: list[int], group: ProcessGroup | None
) -> torch.Tensor:
    out = x.new_empty((sum(out_splits), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
    return out


def all_to_all(
    x: torch.Tensor,
    in_splits: Sequence[int],
    out_splits: Sequence[int],
    group: ProcessGroup | None = None,
) -> torch.Tensor:
    """Uneven all-to-all of the rows of ``x [sum(in_splits), ...]``, with autograd.

    Returns ``[sum(out_splits), ...]`` rows, grouped by source rank.
    """
    return _AllToAll.apply(x, [int(s) for s in in_splits], [int(s) for s in out_splits], group)  # type: ignore[no-any-return]


def all_reduce_grads(
    params: Iterable[torch.nn.Parameter], group: ProcessGroup | None = None
) -> None:
    """Sum the gradients of replicated parameters over the group, in one flat buffer.

    A parameter without a gradient on this rank takes part with zeros (every rank must
    send the same layout).
    """
    grads: list[torch.Tensor] = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
