"""The ForeMoE premise, measured on a routing trace.

Protocol
--------
For one stage of a :class:`~llmsys.moe.tracegen.RoutingTrace` (default: update), with
``share[s, m, l, e] = loads / loads.sum(e)``:

- ``cv_across_steps``: each step's share (micro-steps summed); per layer, the
  load-weighted coefficient of variation over steps, ``sum_e std_e / sum_e mean_e`` (the
  per-expert CV weighted by the expert's mean share, so near-dead experts, whose CV is
  large and whose load is nil, do not dominate), averaged over layers;
- ``cv_across_microsteps``: the same over each step's micro-steps, averaged over steps and
  layers; ``premise_ratio`` is the second over the first;
- ``imbalance_no_balancing_mean`` / ``_p90``: max / mean GPU load per micro-step and
  layer with the static contiguous placement (expert ``e`` on GPU ``e // (E / gpus)``);
- ``imbalance_by_micro_seqs``: the same mean when ``g`` consecutive micro-steps are merged
  into one (larger micro-batches average routing out);
- ``step_to_step_corr``: Pearson correlation of consecutive steps' expert shares, per
  layer, averaged.

:func:`plot_premise` draws the three views to a PNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from llmsys.core.errors import InputError
from llmsys.moe.tracegen import RoutingTrace, Stage

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class PremiseStats:
    """The premise figures of a trace (see the module docstring)."""

    cv_across_steps: float
    """Mean CV of expert share across steps."""
    cv_across_microsteps: float
    """Mean CV of expert share across micro-steps within a step."""
    premise_ratio: float
    """``cv_across_microsteps / cv_across_steps``."""
    imbalance_no_balancing_mean: float
    """Mean max/mean GPU load per micro-step and layer, static placement."""
    imbalance_no_balancing_p90: float
    """90th percentile of the same."""
    imbalance_by_micro_seqs: dict[int, float]
    """Mean imbalance when micro-batches hold this many sequences."""
    step_to_step_corr: float
    """Mean Pearson correlation of consecutive steps' expert shares."""
    gpus: int
    """GPUs of the static placement."""

    def to_json(self) -> dict[str, object]:
        """JSON-ready dict (integer keys as strings; a non-finite figure becomes None)."""

        def f(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {
            "cv_across_steps": f(self.cv_across_steps),
            "cv_across_microsteps": f(self.cv_across_microsteps),
            "premise_ratio": f(self.premise_ratio),
            "imbalance_no_balancing_mean": f(self.imbalance_no_balancing_mean),
            "imbalance_no_balancing_p90": f(self.imbalance_no_balancing_p90),
            "imbalance_by_micro_seqs": {str(k): v for k, v in self.imbalance_by_micro_seqs.items()},
            "step_to_step_corr": f(self.step_to_step_corr),
            "gpus": self.gpus,
        }


def _cv(x: FloatArray, axis: int) -> float:
    """Load-weighted CV of shares ``x`` over ``axis``, averaged over the other leading axes."""
    mean = x.mean(axis=axis).sum(-1)
    std = x.std(axis=axis).sum(-1)
    ok = mean > 0
    return float((std[ok] / mean[ok]).mean()) if ok.any() else 0.0


def _shares(loads: FloatArray) -> FloatArray:
    tot = loads.sum(axis=-1, keepdims=True)
    out: FloatArray = np.divide(loads, tot, out=np.zeros_like(loads), where=tot > 0)
    return out


def gpu_imbalance(loads: FloatArray, gpus: int) -> FloatArray:
    """Max/mean GPU load of ``loads [..., experts]`` under the static contiguous placement."""
    e = loads.shape[-1]
    if gpus < 1 or e % gpus:
        raise InputError(f"{e} experts do not split evenly over {gpus} GPUs")
    per_gpu = loads.reshape(*loads.shape[:-1], gpus, e // gpus).sum(-1)
    mean = per_gpu.mean(-1)
    out: FloatArray = np.divide(per_gpu.max(-1), mean, out=np.ones_like(mean), where=mean > 0)
    return out


def premise_stats(
    trace: RoutingTrace, gpus: int = 8, stage: Stage = Stage.UPDATE, seqs_per_micro: int = 1
) -> PremiseStats:
    """Measure the premise on one stage of ``trace`` (see the module docstring).

    Raises:
        InputError: the stage is absent, fewer than two steps or micro-steps, or experts
            do not split over ``gpus``.
    """
    if stage not in trace.stages:
        raise InputError(f"trace has no {stage.value} stage")
    loads = trace.loads[:, trace.stages.index(stage)].astype(np.float64)  # [S, M, L, E]
    steps, micro = loads.shape[:2]
    if steps < 2 or micro < 2:
        raise InputError("premise statistics need at least two steps and two micro-steps")
    step_share = _shares(loads.sum(axis=1))  # [S, L, E]
    cv_steps = _cv(step_share, axis=0)
    cv_micro = float(np.mean([_cv(_shares(loads[s]), axis=0) for s in range(steps)]))
    imb = gpu_imbalance(loads, gpus)
    by_size: dict[int, float] = {}
    group = 1
    while group <= micro:
        usable = micro - micro % group
        merged = loads[:, :usable].reshape(steps, usable // group, group, *loads.shape[2:]).sum(2)
        by_size[group * seqs_per_micro] = float(gpu_imbalance(merged, gpus).mean())
        group *= 2
    corrs = [
        np.corrcoef(step_share[s, layer], step_share[s + 1, layer])[0, 1]
        for s in range(steps - 1)
        for layer in range(loads.shape[2])
    ]
    return PremiseStats(
        cv_across_steps=cv_steps,
        cv_across_microsteps=cv_micro,
        premise_ratio=cv_micro / cv_steps if cv_steps > 0 else float("inf"),
        imbalance_no_balancing_mean=float(imb.mean()),
        imbalance_no_balancing_p90=float(np.percentile(imb, 90)),
        imbalance_by_micro_seqs=by_size,
        step_to_step_corr=float(np.nanmean(corrs)),
        gpus=gpus,
    )


def plot_premise(trace: RoutingTrace, stats: PremiseStats, path: Path, layer: int = 0) -> Path:
    """Write a three-panel PNG: one layer's expert share per micro-step and per step, the
    CVs, and imbalance versus micro-batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = trace.loads[:, -1].astype(np.float64)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    micro_share = _shares(loads[:, :, layer]).reshape(-1, loads.shape[-1])
    axes[0].imshow(micro_share.T, aspect="auto", cmap="viridis", interpolation="nearest")
    axes[0].set_xlabel("micro-step (steps concatenated)")
    axes[0].set_ylabel("expert")
    axes[0].set_title(f"layer {layer}: expert share per micro-step")
    axes[1].bar(
        ["across steps", "across micro-steps"], [stats.cv_across_steps, stats.cv_across_microsteps]
    )
    axes[1].set_ylabel("mean CV of expert share")
    axes[1].set_title(f"premise ratio {stats.premise_ratio:.2f}")
    sizes = sorted(stats.imbalance_by_micro_seqs)
    axes[2].plot(sizes, [stats.imbalance_by_micro_seqs[s] for s in sizes], marker="o")
    axes[2].set_xscale("log", base=2)
    axes[2].set_xlabel("sequences per micro-batch")
    axes[2].set_ylabel(f"max/mean GPU load ({stats.gpus} GPUs, static)")
    axes[2].set_title("imbalance vs micro-batch size")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
