"""Rank functions for the multi-process tests (spawned processes import them by name).

Every scenario builds the same single-process reference on every rank (same seed), runs
the expert-parallel layer on this rank's shard of the tokens, and returns the largest
absolute differences it saw, as plain floats.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from llmsys.moe.baselines import plan_static
from llmsys.moe.ep.comm import all_reduce_grads
from llmsys.moe.ep.layer import EPMoELayer
from llmsys.moe.ep.replicas import ReplicaStore, reduce_replica_grads
from llmsys.moe.lm.config import MoEConfig
from llmsys.moe.lm.model import MoELayer
from llmsys.moe.placement import Placement, Policy
from llmsys.moe.planner import plan_foremoe
from llmsys.moe.topology import HomeLayout, Topology, home_layout

PRELOAD = ("torch", "torch.distributed", "llmsys.moe.ep.layer", "tests.moe.ep.warmup")
"""What the tests' fork server imports before forking ranks."""
CFG = MoEConfig(num_layers=1, hidden=16, num_heads=2, num_experts=8, top_k=2, expert_ffn=12)
TOKENS_PER_RANK = 24


def random_placement(
    load: np.ndarray,
    topo: Topology,
    homes: HomeLayout,
    rng: np.random.Generator,
    hot: int | None = None,
) -> Placement:
    """Homes pinned; every redundant slot gets a random expert (``hot`` twice on rank 0 when
    given); each expert's tokens split at random over its slots (zero shares allowed)."""
    layers, e = load.shape
    expert = np.zeros((layers, topo.num_slots), dtype=np.int64)
    filled = np.zeros_like(expert, dtype=bool)
    tokens = np.zeros_like(expert)
    home = homes.home_slot()
    red = homes.redundant_slots()
    for li in range(layers):
        expert[li, home[li]] = np.arange(e)
        filled[li, home[li]] = True
        expert[li, red] = rng.integers(0, e, red.size)
        filled[li, red] = True
        if hot is not None:
            expert[li, red[:2]] = hot  # two replicas of one expert on rank 0
        for ex in range(e):
            slots = np.flatnonzero(filled[li] & (expert[li] == ex))
            cuts = np.sort(rng.integers(0, load[li, ex] + 1, slots.size - 1))
            tokens[li, slots] = np.diff(np.r_[0, cuts, load[li, ex]])
    return Placement(Policy.MILP, topo, e, expert, filled, tokens)


def _batch(rng: np.random.Generator, world: int, cold: int) -> tuple[torch.Tensor, ...]:
    """Tokens of all ranks: x, replayed routes (expert ``cold`` never chosen), valid, target."""
    n = world * TOKENS_PER_RANK
    x = torch.from_numpy(rng.standard_normal((n, CFG.hidden)))
    experts = np.array([e for e in range(CFG.num_experts) if e != cold])
    # skewed: expert 0 and 1 are hot
    p = np.where(experts < 2, 6.0, 1.0)
    routes = np.stack(
        [rng.choice(experts, CFG.top_k, replace=False, p=p / p.sum()) for _ in range(n)]
    )
    valid = torch.from_numpy(rng.random(n) > 0.15)
    target = torch.from_numpy(rng.standard_normal((n, CFG.hidden)))
    return x, torch.from_numpy(routes).long(), valid, target


def _counts(routes: torch.Tensor, valid: torch.Tensor, world: int) -> np.ndarray:
    out = np.zeros((world, CFG.num_experts), dtype=np.int64)
    for r in range(world):
        sl = slice(r * TOKENS_PER_RANK, (r + 1) * TOKENS_PER_RANK)
        v = valid[sl]
        out[r] = np.bincount(routes[sl][v].reshape(-1).numpy(), minlength=CFG.num_experts)
    return out


def _install(layer: EPMoELayer, store: ReplicaStore, ref: MoELayer) -> None:
    """Test shortcut for the transfer engine: copy replicas from the reference weights."""
    store.evict({(0, e) for e in layer.needed_replicas()})
    for e in layer.needed_replicas():
        store.install(
            (0, e),
            (ref.w1[e].detach().clone(), ref.w3[e].detach().clone(), ref.w2[e].detach().clone()),
        )


def _run(
    rank: int,
    world: int,
    policy: str,
    micro_steps: int,
    seed: int,
    aux: bool,
    planned_counts: bool = True,
) -> dict[str, Any]:
    """Accumulate ``micro_steps`` micro-steps under a policy; compare with the reference."""
    torch.manual_seed(seed)
    ref = MoELayer(CFG).double().train()
    topo = Topology(1, world, CFG.num_experts // world + 2)
    homes = home_layout(topo, CFG.num_experts, 1)
    store = ReplicaStore()
    layer = EPMoELayer.from_reference(ref, 0, homes, rank, store).train()
    rng = np.random.default_rng(seed)  # data: the same whatever the policy
    prng = np.random.default_rng(seed + 1000)  # placements
    sl = slice(rank * TOKENS_PER_RANK, (rank + 1) * TOKENS_PER_RANK)
    err = {"y": 0.0, "loss": 0.0, "x_grad": 0.0}
    prev: Placement | None = None
    coef = 0.1 if aux else 0.0
    for m in range(micro_steps):
        x, routes, valid, target = _batch(rng, world, cold=(m + 3) % CFG.num_experts)
        counts = _counts(routes, valid, world)
        load = counts.sum(0)[None]
        if policy == "static":
            placement = plan_static(load, topo)
        elif policy == "foremoe":
            placement = plan_foremoe(load, topo, prev, homes=homes)
        else:
            hot = int(prng.integers(CFG.num_experts // world, CFG.num_experts))  # homed off rank 0
            placement = random_placement(load, topo, homes, prng, hot=hot)
        placement.check_against(load)
        prev = placement
        # reference on all tokens
        x_ref = x.clone().requires_grad_(True)
        y_ref, _, aux_ref = ref(x_ref, routes, valid)
        loss_ref = (y_ref * target)[valid].sum() + coef * aux_ref
        loss_ref.backward()
        # expert parallel on this rank's shard
        given = counts if planned_counts else None  # None: the layer all-gathers them
        p0 = placement
        layer.set_step(p0.slot_expert[0], p0.slot_filled[0], p0.slot_tokens[0], given)
        _install(layer, store, ref)
        x_ep = x[sl].clone().requires_grad_(True)
        y_ep, _, aux_ep = layer(x_ep, routes[sl], valid[sl])
        loss_ep = (y_ep * target[sl])[valid[sl]].sum() + coef * aux_ep
        loss_ep.backward()
        total = loss_ep.detach().clone()
        dist.all_reduce(total)
        v = valid[sl]
        err["y"] = max(err["y"], float((y_ep[v] - y_ref[sl][v]).detach().abs().max()))
        err["loss"] = max(err["loss"], abs(float(total) - float(loss_ref.detach())))
        assert x_ep.grad is not None and x_ref.grad is not None
        err["x_grad"] = max(err["x_grad"], float((x_ep.grad - x_ref.grad[sl]).abs().max()))
    reduce_replica_grads([layer], store)
    all_reduce_grads([layer.router.weight])
    idx = torch.tensor(layer.home_experts)
    grads = {}
    for name in ("w1", "w3", "w2"):
        mine, theirs = getattr(layer, name).grad, getattr(ref, name).grad
        assert mine is not None and theirs is not None
        err[f"{name}_grad"] = float((mine - theirs[idx]).abs().max())
        grads[name] = mine.numpy().copy()
    assert layer.router.weight.grad is not None and ref.router.weight.grad is not None
    err["router_grad"] = float((layer.router.weight.grad - ref.router.weight.grad).abs().max())
    grads["router"] = layer.router.weight.grad.numpy().copy()
    return {"err": err, "grads": grads}


def scenarios(rank: int, world: int) -> dict[str, Any]:
    """Every layer scenario on one group (one spawn per world size keeps the tests quick)."""
    torch.set_default_dtype(torch.float64)
    out: dict[str, Any] = {}
    out["static"] = _run(rank, world, "static", 1, 1, aux=True)
    out["replicas"] = _run(rank, world, "random", 1, 2, aux=True)
    out["foremoe"] = _run(rank, world, "foremoe", 1, 3, aux=False)
    out["gathered"] = _run(rank, world, "random", 1, 5, aux=True, planned_counts=False)
    # a mini-batch of 4 micro-steps, same data: static plan vs a plan changing every micro-step
    out["mb_static"] = _run(rank, world, "static", 4, 4, aux=True)
    out["mb_changing"] = _run(rank, world, "random", 4, 4, aux=True)
    return out


def fail_on(rank: int, world: int, bad: int, how: str) -> int:
    """Rank ``bad`` dies, hangs or raises before an all-reduce the others wait in."""
    import os
    import time

    if rank == bad:
        if how == "die":
            os._exit(3)
        if how == "hang":
            time.sleep(3600)
        if how == "raise":
            raise ValueError("boom")
    t = torch.ones(4)
    dist.all_reduce(t)
    return int(t[0])


def _sharded_tiny(rank: int, world: int, seed: int, run_id: str) -> tuple[Any, ...]:
    """A seeded 2-layer float64 model, its single-process copy, and this rank's shard:
    ``(cfg, ref, model, topo, homes, store, layers, host)``; the host copy's files are mapped by
    every rank and already unlinked."""
    import copy
    from pathlib import Path

    from llmsys.moe.ep.executor import shard_model
    from llmsys.moe.ep.transfer import HostCopy
    from llmsys.moe.lm.model import MoELM

    torch.set_default_dtype(torch.float64)
    cfg = MoEConfig(
        num_layers=2,
        hidden=16,
        num_heads=2,
        num_experts=8,
        top_k=2,
        expert_ffn=12,
        max_seq_tokens=32,
    )
    torch.manual_seed(seed)
    ref = MoELM(cfg).double().train()
    model = copy.deepcopy(ref)
    topo = Topology(1, world, cfg.num_experts // world + 2)
    homes = home_layout(topo, cfg.num_experts, cfg.num_layers)
    store = ReplicaStore(wait_timeout_s=30.0)
    layers = shard_model(model, homes, rank, store)
    host = HostCopy(
        Path("/dev/shm"),
        run_id,
        cfg.num_layers,
        cfg.num_experts,
        layers[0].expert_numel,
        world,
        torch.float64,
    )
    dist.barrier()  # all ranks mapped the files: remove them, the mappings stay valid
    if rank == 0:
        host.unlink()
    return cfg, ref, model, topo, homes, store, layers, host


def executor_run(rank: int, world: int, link: str, run_id: str) -> dict[str, Any]:
    """Two mini-batches of a 2-layer model under changing placements, weights moved by the
    transfer engine over the chosen path mix; gradients compared with one process."""

    import torch.nn.functional as F

    from llmsys.moe.ep.executor import Executor, MicroStep, rank_counts
    from llmsys.moe.ep.transfer import LinkModel, TransferEngine, TransferPath
    from llmsys.moe.lm.model import RouteMode

    cfg, ref, model, topo, homes, store, layers, host = _sharded_tiny(rank, world, 5, run_id)
    fast, slow = 1e9, 1e3
    models = {
        "direct": LinkModel(1e-6, fast, 1e-6, slow),
        "host": LinkModel(1e-6, slow, 1e-6, fast),
        "mixed": LinkModel(1e-6, fast, 1e-6, fast),
    }
    group = dist.new_group(backend="gloo")
    engine = TransferEngine(layers, store, models[link], host, group, timeout_s=30.0)
    executor = Executor(model, layers, store, engine)
    rng = np.random.default_rng(11)
    prng = np.random.default_rng(12)
    seqs, width = 2 * world, 10
    err = 0.0
    paths = {p.value: 0 for p in TransferPath}

    # plain SGD by hand: torch.optim imports torch._dynamo, ~10 s per process here
    def sgd(params: Any) -> None:
        with torch.no_grad():
            for q in params:
                q -= 0.1 * q.grad
                q.grad = None

    for _mini in range(2):
        micros = []
        prev: Placement | None = None
        for _m in range(3):
            tokens = torch.from_numpy(rng.integers(0, 256, (seqs, width)))
            valid = torch.ones(seqs, width, dtype=torch.bool)
            valid[0, -3:] = False
            p = np.where(np.arange(cfg.num_experts) < 2, 6.0, 1.0)
            routes = torch.from_numpy(
                np.stack(
                    [
                        prng.choice(cfg.num_experts, cfg.top_k, replace=False, p=p / p.sum())
                        for _ in range(seqs * width * cfg.num_layers)
                    ]
                )
            ).view(seqs, width, cfg.num_layers, cfg.top_k)
            counts = rank_counts(routes, valid, world, cfg.num_experts)
            load = counts.sum(0)
            if _m == 1:
                hot = int(prng.integers(cfg.num_experts // world, cfg.num_experts))
                placement = random_placement(load, topo, homes, prng, hot=hot)
            else:
                placement = plan_foremoe(load, topo, prev, homes=homes)
            prev = placement
            micros.append(MicroStep(tokens, valid, routes, placement, counts))
        n_total = sum(int(ms.valid[:, 1:].sum()) for ms in micros)

        def loss_fn(
            out: Any, m: int, rows: slice, micros: list[MicroStep] = micros, n_total: int = n_total
        ) -> torch.Tensor:
            ms = micros[m]
            lp = (
                F.log_softmax(out.logits[:, :-1], dim=-1)
                .gather(-1, ms.tokens[rows][:, 1:, None])
                .squeeze(-1)
            )
            mask = ms.valid[rows][:, 1:]
            return -(lp * mask).sum() / n_total + 0.01 * out.aux_loss / len(micros)

        stats = executor.run_minibatch(micros, loss_fn)
        for m, ms in enumerate(micros):
            out = ref(ms.tokens, ms.valid, RouteMode.REPLAY, routes=ms.routes)
            loss_fn(out, m, slice(None)).backward()
        ref_params = dict(ref.named_parameters())
        for name, param in model.named_parameters():
            theirs = ref_params[name].grad
            assert param.grad is not None and theirs is not None, name
            if name.endswith(("moe.w1", "moe.w3", "moe.w2")):
                layer = layers[int(name.split(".")[1])]
                theirs = theirs[torch.tensor(layer.home_experts)]
            err = max(err, float((param.grad - theirs).abs().max()))
        sgd(executor.parameters())
        sgd(ref.parameters())
        assert stats.moves == len(engine.moves) - sum(paths.values())
        for mv in engine.moves[sum(paths.values()) :]:
            paths[mv.path.value] += 1
    engine.close()
    return {"err": err, "paths": paths, "exposed_s": store.exposed_wait_s}


class _SGD:
    """Plain SGD with the optimizer interface run_update needs (torch.optim imports
    torch._dynamo, about 10 s per process on the test machine)."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float) -> None:
        self.params, self.lr = params, lr

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        with torch.no_grad():
            for p in self.params:
                if p.grad is not None:
                    p -= self.lr * p.grad


def update_run(rank: int, world: int, policy: str, run_id: str) -> dict[str, Any]:
    """One GRPO update (2 mini-batches, clipped) on the EP model vs one process."""

    from llmsys.moe.ep.executor import Executor
    from llmsys.moe.ep.transfer import LinkModel, TransferEngine
    from llmsys.moe.ep.update import UpdateBatch, UpdateConfig, _loss, run_update
    from llmsys.moe.lm.model import RouteMode

    cfg, ref, model, _, homes, store, layers, host = _sharded_tiny(rank, world, 7, run_id)
    engine = TransferEngine(
        layers, store, LinkModel(1e-6, 1e9, 1e-6, 1e9), host, dist.new_group(backend="gloo")
    )
    executor = Executor(model, layers, store, engine)
    rng = np.random.default_rng(21)
    seqs, width = 8, 9
    inputs = torch.from_numpy(rng.integers(0, 256, (seqs, width)))
    valid = torch.from_numpy(rng.random((seqs, width)) > 0.1)
    targets = torch.from_numpy(rng.integers(0, 256, (seqs, width)))
    mask = valid & torch.from_numpy(rng.random((seqs, width)) > 0.4)
    p = np.where(np.arange(cfg.num_experts) < 2, 6.0, 1.0)
    routes = torch.from_numpy(
        np.stack(
            [
                rng.choice(cfg.num_experts, cfg.top_k, replace=False, p=p / p.sum())
                for _ in range(seqs * width * cfg.num_layers)
            ]
        )
    ).view(seqs, width, cfg.num_layers, cfg.top_k)
    with torch.no_grad():
        out = ref(inputs, valid, RouteMode.REPLAY, routes=routes)
        old = torch.log_softmax(out.logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    old = old + torch.from_numpy(rng.normal(0, 0.1, (seqs, width)))
    adv = torch.from_numpy(rng.normal(size=seqs))
    batch = UpdateBatch(inputs, valid, targets, mask, routes, old, adv)
    ucfg = UpdateConfig(
        micro_batch_seqs=2, mini_batches=2, max_grad_norm=0.05, policy=Policy(policy)
    )
    initial = [p.detach().clone() for p in ref.parameters()]
    stats = run_update(executor, _SGD(executor.parameters(), 0.5), batch, ucfg, homes)
    # reference: the same update in one process
    per_mini = seqs // ucfg.mini_batches
    for i in range(ucfg.mini_batches):
        starts = [i * per_mini + j * 2 for j in range(per_mini // 2)]
        n_tokens = int(mask[i * per_mini : (i + 1) * per_mini].sum())
        loss_fn = _loss(batch, ucfg, starts, n_tokens, len(starts))
        ref.zero_grad(set_to_none=True)
        for m, s0 in enumerate(starts):
            rows = slice(s0, s0 + 2)
            out = ref(inputs[rows], valid[rows], RouteMode.REPLAY, routes=routes[rows])
            loss_fn(out, m, slice(0, 2)).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), ucfg.max_grad_norm)
        _SGD(list(ref.parameters()), 0.5).step()
    ref_params = dict(ref.named_parameters())
    err = 0.0
    for name, param in model.named_parameters():
        theirs = ref_params[name].detach()
        if name.endswith(("moe.w1", "moe.w3", "moe.w2")):
            theirs = theirs[torch.tensor(layers[int(name.split(".")[1])].home_experts)]
        err = max(err, float((param.detach() - theirs).abs().max()))
    moved = max(
        float((p0 - p1.detach()).abs().max())
        for p0, p1 in zip(initial, ref.parameters(), strict=True)
    )
    engine.close()
    return {"err": err, "moved": moved, "moves": sum(s.moves for s in stats)}


def hang_in_layer(rank: int, world: int, bad: int) -> float:
    """Every rank runs the EP layer; rank ``bad`` stops before its second micro-step's
    forward, leaving its peers in the dispatch all-to-all."""
    import time

    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    ref = MoELayer(CFG).double()
    topo = Topology(1, world, CFG.num_experts // world + 2)
    layer = EPMoELayer.from_reference(
        ref, 0, home_layout(topo, CFG.num_experts, 1), rank, ReplicaStore()
    )
    rng = np.random.default_rng(0)
    sl = slice(rank * TOKENS_PER_RANK, (rank + 1) * TOKENS_PER_RANK)
    total = 0.0
    for m in range(2):
        x, routes, valid, _ = _batch(rng, world, cold=m)
        counts = _counts(routes, valid, world)
        p = plan_static(counts.sum(0)[None], topo)
        layer.set_step(p.slot_expert[0], p.slot_filled[0], p.slot_tokens[0], counts)
        if m == 1 and rank == bad:
            time.sleep(3600)
        y, _, _ = layer(x[sl], routes[sl], valid[sl])
        total += float(y.sum())
    return total
