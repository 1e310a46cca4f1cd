"""``llmsys moe train | rl | trace-stats``: the real MoE model, its RL run, and its routing.

``train`` pre-trains the tiny MoE model on local text (its defaults reproduce the shipped
checkpoint), ``rl`` post-trains a checkpoint with GRPO under router replay and records the
routing trace, ``trace-stats`` measures the ForeMoE premise on a trace (default: the
shipped one) and optionally fits the trace generator to it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from llmsys.core.errors import InputError


def register_lm(children: Any) -> None:
    """Add ``train``, ``rl`` and ``trace-stats`` to the ``moe`` subparsers."""
    t = children.add_parser(
        "train",
        help="pre-train the tiny MoE language model on this machine's text",
        description=(
            "Pre-train the byte-level MoE model (4 layers, 32 experts, top-4) on the Python "
            "standard library, man pages and generated arithmetic. Deterministic: the "
            "defaults reproduce the shipped checkpoint on the same files."
        ),
    )
    t.add_argument(
        "--out", type=Path, default=Path("moe-lm-tiny.safetensors"), help="checkpoint to write"
    )
    t.add_argument("--steps", type=int, default=None, help="optimizer steps (default 700)")
    t.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    t.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    t.set_defaults(handler=_train)

    r = children.add_parser(
        "rl",
        help="GRPO post-training with router replay; records the routing trace",
        description=(
            "Run GRPO on arithmetic from a checkpoint (default: the shipped one): rollout with "
            "a KV cache recording routes, recompute and update replaying them in "
            "micro-steps. Writes the routing trace (npz, see llmsys.moe.lm.recorded)."
        ),
    )
    r.add_argument("--steps", type=int, default=10, help="RL steps (default 10)")
    r.add_argument("--checkpoint", type=Path, default=None, help="starting checkpoint")
    r.add_argument("--trace-out", type=Path, default=Path("rl-trace.npz"), help="trace to write")
    r.add_argument(
        "--save-checkpoint", type=Path, default=None, help="write the post-trained model"
    )
    r.add_argument("--group-size", type=int, default=8, help="responses per prompt")
    r.add_argument("--prompts", type=int, default=8, help="prompts per step")
    r.add_argument("--micro-batch-seqs", type=int, default=4, help="sequences per micro-step")
    r.add_argument("--mini-batches", type=int, default=2, help="optimizer steps per RL step")
    r.add_argument("--no-replay", action="store_true", help="route afresh in recompute/update")
    r.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="compute dtype (default float64: recompute then matches rollout log-probs to "
        "1e-12; float32 is about 3x faster and differs by up to ~3e-5)",
    )
    r.add_argument("--seed", type=int, default=0, help="seed")
    r.add_argument("--json", action="store_true", help="last line: one JSON summary")
    r.set_defaults(handler=_rl)

    s = children.add_parser(
        "trace-stats",
        help="measure the ForeMoE premise on a routing trace",
        description=(
            "Coefficient of variation of expert share across steps vs across micro-steps, "
            "imbalance vs micro-batch size with static placement, step-to-step correlation."
        ),
    )
    s.add_argument("trace", nargs="?", type=Path, default=None, help="trace npz (default: shipped)")
    s.add_argument("--gpus", type=int, default=8, help="GPUs of the static placement (default 8)")
    s.add_argument("--plot", type=Path, default=None, help="write a PNG of the premise")
    s.add_argument("--fit", action="store_true", help="also fit the trace generator's parameters")
    s.add_argument("--json", action="store_true", help="last line: one JSON object")
    s.set_defaults(handler=_trace_stats)


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tqdm import tqdm

    from llmsys.moe.lm.pretrain import TrainConfig, train_checkpoint

    cfg = TrainConfig()
    for name in ("steps", "seed", "threads"):
        if getattr(args, name) is not None:
            cfg = replace(cfg, **{name: getattr(args, name)})
    with tqdm(total=cfg.steps, unit="step", disable=None) as bar:

        def on_log(log: Any) -> None:
            bar.update(log.step - bar.n)
            bar.set_postfix(loss=f"{log.loss:.3f}", aux=f"{log.aux_loss:.2f}")

        logs = train_checkpoint(args.out, cfg=cfg, on_log=on_log)
    print(f"wrote {args.out}: final loss {logs[-1].loss:.3f} nats/byte, {logs[-1].elapsed_s:.0f} s")
    return 0


def _rl(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from llmsys.moe.lm.checkpoint import load_model, save_checkpoint
    from llmsys.moe.lm.grpo import RLConfig
    from llmsys.moe.lm.rl import run_rl

    cfg = RLConfig(
        steps=args.steps,
        prompts_per_step=args.prompts,
        group_size=args.group_size,
        micro_batch_seqs=args.micro_batch_seqs,
        mini_batches=args.mini_batches,
        replay=not args.no_replay,
        seed=args.seed,
    )
    import torch

    model = load_model(args.checkpoint, dtype=getattr(torch, args.dtype))
    rows: list[tuple[int, float, float, float, float, float]] = []
    with tqdm(total=cfg.steps, unit="step", disable=None) as bar:

        def on_step(step: int, rec: Any) -> None:
            rows.append((step, float(rec.rewards.mean()), *rec.stage_wall_s, rec.route_mismatch[1]))
            bar.update(1)
            bar.set_postfix(reward=f"{rows[-1][1]:.3f}")

        result = run_rl(model, cfg, on_step)
    header = ("step", "reward", "rollout_s", "recompute_s", "update_s", "mismatch")
    print(" ".join(f"{h:>{max(4, len(h))}}" for h in header))
    for step, rew, a, b, c, mm in rows:
        print(f"{step:>4} {rew:>6.3f} {a:>9.2f} {b:>11.2f} {c:>8.2f} {mm:>8.3f}")
    result.run.save(args.trace_out)
    print(f"wrote trace {args.trace_out}")
    if args.save_checkpoint is not None:
        save_checkpoint(model, args.save_checkpoint, {"rl": {"steps": cfg.steps, "seed": cfg.seed}})
    if args.json:
        rewards = result.mean_rewards
        print(
            json.dumps(
                {
                    "mean_reward_first": rewards[0],
                    "mean_reward_last": rewards[-1],
                    "rl_wall_s": sum(sum(r.stage_wall_s) for r in result.records),
                    "route_mismatch_update_max": max(r.route_mismatch[1] for r in result.records),
                    "logprob_max_abs_diff": max(r.logprob_max_abs_diff for r in result.records),
                }
            )
        )
    return 0


def _trace_stats(args: argparse.Namespace) -> int:
    from llmsys.moe.lm.recorded import load_recorded
    from llmsys.moe.trace_stats import plot_premise, premise_stats
    from llmsys.moe.tracefit import fit_trace_params

    if args.gpus < 1:
        raise InputError("--gpus must be >= 1")
    run = load_recorded(args.trace)
    stats = premise_stats(run.trace, gpus=args.gpus, seqs_per_micro=run.seqs_per_micro)
    print(f"trace: {args.trace or 'shipped'}  shape {tuple(run.trace.loads.shape)}")
    print(f"CV of expert share across steps       {stats.cv_across_steps:.3f}")
    print(f"CV of expert share across micro-steps {stats.cv_across_microsteps:.3f}")
    print(f"premise ratio                         {stats.premise_ratio:.2f}")
    print(
        f"imbalance, static, {stats.gpus} GPUs          "
        f"mean {stats.imbalance_no_balancing_mean:.3f}"
        f"  p90 {stats.imbalance_no_balancing_p90:.3f}"
    )
    for seqs, imb in sorted(stats.imbalance_by_micro_seqs.items()):
        print(f"  {seqs:>4} sequences per micro-batch: imbalance {imb:.3f}")
    print(f"step-to-step correlation of shares    {stats.step_to_step_corr:.3f}")
    out: dict[str, Any] = stats.to_json()
    if args.plot is not None:
        print(f"plot: {plot_premise(run.trace, stats, args.plot)}")
    if args.fit:
        fit = fit_trace_params(run.trace, run.seqs_per_micro, run.group_size, gpus=args.gpus)
        p = fit.params
        print(
            f"fitted generator: zipf_exponent={p.zipf_exponent} topic_concentration="
            f"{p.topic_concentration} mixture_alpha={p.mixture_alpha} (distance {fit.distance:.3f})"
        )
        out["fit"] = {
            "zipf_exponent": p.zipf_exponent,
            "topic_concentration": p.topic_concentration,
            "mixture_alpha": p.mixture_alpha,
            "distance": fit.distance,
            "fitted_stats": fit.fitted.to_json(),
        }
    if args.json:
        print(json.dumps(out))
    return 0
