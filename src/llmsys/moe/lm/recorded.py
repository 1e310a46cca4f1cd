"""Recorded routing of a real RL run: per-micro-step loads plus per-token routes, on disk.

File format (npz, ``recorded_format_version`` 1)
-------------------------------------------------
A superset of :meth:`~llmsys.moe.tracegen.RoutingTrace.save`'s keys, so
:func:`~llmsys.moe.tracegen.load_trace` reads the loads of a recorded run unchanged:

==========================  =========================================  =================
key                         shape                                      meaning
==========================  =========================================  =================
``loads``                   ``[steps, 2, micro, layers, experts]``     tokens per expert
``stages``                  ``[2]`` str                                ``recompute``, ``update``
``shape``                   str (JSON)                                 model dimensions
``tokens_per_micro``        int                                        mean valid tokens
``format_version``          int                                        trace format (1)
``routes``                  ``[steps, seqs, T, layers, top_k]`` uint8  rollout routes
``valid``                   ``[steps, seqs, T]`` bool                  real input tokens
``tokens``                  ``[steps, seqs, T]`` int16                 input token ids
``rewards``                 ``[steps, seqs]`` float32                  response rewards
``seqs_per_micro``          int                                        micro-step size
``group_size``              int                                        GRPO group size
``recorded_format_version`` int                                        this format (1)
``replayed``                bool (optional, default true)              update replayed routes
==========================  =========================================  =================

Sequence ``i`` of a step belongs to micro-step ``i // seqs_per_micro``; ``T`` is the
longest step's input width, shorter steps padded with invalid positions. :func:`load_recorded`
checks the keys, the routes' and mask's dtypes, every shape, and - when the run replayed its
routes - that both stages' loads equal the counts of the valid routes (a ``--no-replay``
run re-routes, so its stage loads differ by design). A truncated or hand-edited file fails
with :class:`~llmsys.core.errors.InputError` instead of giving wrong statistics.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from llmsys.core.errors import InputError
from llmsys.moe.tracegen import RoutingTrace, Stage, load_trace

RECORDED_FORMAT_VERSION = 1
SHIPPED_TRACE = Path(__file__).resolve().parent.parent / "data" / "rl-trace-tiny.npz"
"""The trace recorded by ``llmsys moe rl`` with its defaults from the shipped checkpoint."""


@dataclass(frozen=True, slots=True)
class RecordedRun:
    """Loads and per-token routes of a recorded RL run.

    Raises:
        InputError: arrays disagree in shape or dtype, or loads do not match routes.
    """

    trace: RoutingTrace
    """Per-micro-step loads (what planners and the simulator read)."""
    routes: npt.NDArray[np.uint8] = field(repr=False)
    """``[steps, seqs, T, layers, top_k]`` experts of each input token."""
    valid: npt.NDArray[np.bool_] = field(repr=False)
    """``[steps, seqs, T]`` real input tokens."""
    tokens: npt.NDArray[np.int16] = field(repr=False)
    """``[steps, seqs, T]`` input token ids."""
    rewards: npt.NDArray[np.float32] = field(repr=False)
    """``[steps, seqs]`` rewards."""
    seqs_per_micro: int
    """Sequences per micro-step."""
    group_size: int
    """GRPO group size."""
    replayed: bool = True
    """Whether recompute and update replayed the rollout's routes."""

    def __post_init__(self) -> None:
        if self.seqs_per_micro < 1:
            raise InputError("seqs_per_micro must be >= 1")
        steps, _, micro, layers, experts = self.trace.loads.shape
        k = self.trace.shape.top_k
        if self.routes.ndim != 5 or self.routes.shape[3:] != (layers, k):
            raise InputError(
                f"routes must be [steps, seqs, T, {layers}, {k}], got {self.routes.shape}"
            )
        seqs, width = self.routes.shape[1:3]
        if self.routes.shape[0] != steps or seqs != micro * self.seqs_per_micro:
            raise InputError("routes disagree with loads in steps or sequences per step")
        if self.valid.shape != (steps, seqs, width) or self.tokens.shape != (steps, seqs, width):
            raise InputError("valid and tokens must be [steps, seqs, T] like routes")
        if self.rewards.shape != (steps, seqs):
            raise InputError("rewards must be [steps, seqs]")
        if self.valid.dtype != np.bool_ or self.routes.dtype != np.uint8:
            raise InputError("valid must be bool and routes uint8")
        if int(self.routes.max(initial=0)) >= experts:
            raise InputError("a route names an expert the model does not have")
        if self.group_size < 1 or seqs % self.group_size:
            raise InputError("group_size must divide the sequences per step")

    def counted_loads(self) -> npt.NDArray[np.int64]:
        """``[steps, micro, layers, experts]`` loads recounted from the per-token routes."""
        steps, _, micro, layers, experts = self.trace.loads.shape
        out = np.zeros((steps, micro, layers, experts), dtype=np.int64)
        seq_micro = np.arange(self.routes.shape[1]) // self.seqs_per_micro
        for s in range(steps):
            idx_seq, _ = np.nonzero(self.valid[s])
            r = self.routes[s][self.valid[s]].astype(np.int64)  # [n, L, k]
            m = np.repeat(seq_micro[idx_seq], layers * r.shape[2])
            lay = np.tile(np.repeat(np.arange(layers), r.shape[2]), len(r))
            np.add.at(out[s], (m, lay, r.reshape(-1)), 1)
        return out

    def save(self, path: Path) -> None:
        """Write the npz described in the module docstring."""
        np.savez_compressed(
            path,
            **self.trace.arrays(),
            routes=self.routes,
            valid=self.valid,
            tokens=self.tokens,
            rewards=self.rewards,
            seqs_per_micro=np.array(self.seqs_per_micro),
            group_size=np.array(self.group_size),
            recorded_format_version=np.array(RECORDED_FORMAT_VERSION),
            replayed=np.array(self.replayed),
        )


def load_recorded(path: Path | None = None) -> RecordedRun:
    """Read a recorded run (default: the shipped trace); see the module docstring.

    Raises:
        InputError: missing, truncated or malformed file, or loads that do not match the
            routes.
    """
    src = SHIPPED_TRACE if path is None else path
    trace = load_trace(src)
    try:
        with np.load(src, allow_pickle=False) as data:
            version = int(data["recorded_format_version"])
            if version != RECORDED_FORMAT_VERSION:
                raise InputError(
                    f"{src}: recorded format {version}, expected {RECORDED_FORMAT_VERSION}"
                )
            run = RecordedRun(
                trace=trace,
                routes=np.asarray(data["routes"]),
                valid=np.asarray(data["valid"]),
                tokens=np.asarray(data["tokens"]),
                rewards=np.asarray(data["rewards"]),
                seqs_per_micro=int(data["seqs_per_micro"]),
                group_size=int(data["group_size"]),
                replayed=bool(data["replayed"]) if "replayed" in data.files else True,
            )
    except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{src}: not a recorded RL trace ({exc})") from exc
    if trace.stages != (Stage.RECOMPUTE, Stage.UPDATE):
        raise InputError(f"{src}: recorded traces hold the recompute and update stages")
    if run.replayed:
        counted = run.counted_loads()
        for stage in (0, 1):
            if not np.array_equal(counted, trace.loads[:, stage]):
                name = trace.stages[stage].value
                raise InputError(f"{src}: {name}-stage loads do not match the recorded routes")
    return run
