"""Routing traces: the array type, its npz file, and a parametric generator.

Protocol: a :class:`RoutingTrace` holds ``loads[step, stage, micro, layer, expert]``, the
tokens routed to each expert (top-k counted once per token and expert) in each micro-step
of each RL stage. Under router replay the recompute and update stages reuse the rollout's
routes, so their loads are equal. :meth:`RoutingTrace.save` / :func:`load_trace` write and
read the npz form (keys ``loads``, ``stages``, ``model``, ``shape``, ``tokens_per_micro``,
``format_version``); a trace recorded from a real RL run is stored the same way.

:func:`generate_trace` draws a synthetic trace: per-layer expert popularity (Zipf over a
random expert order, or Dirichlet), ``num_topics`` topic profiles that perturb it, one topic
mixture per prompt (all responses to a prompt route alike, as in GRPO groups), and each
data-parallel rank's micro-step holding consecutive responses of one prompt. Per-expert
counts are multinomial draws of ``tokens x top_k`` routes, which ignores top-k's
"distinct experts per token" rule - harmless for load counts.
"""

from __future__ import annotations

import enum
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from llmsys.core.errors import ConfigError, InputError

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
TRACE_FORMAT_VERSION = 1


class Stage(enum.Enum):
    """RL stages whose micro-steps run the MoE layers under router replay."""

    RECOMPUTE = "recompute"
    """Forward pass that recomputes old log-probs."""
    UPDATE = "update"
    """Forward and backward pass of the policy update (gradient accumulation)."""


class Popularity(enum.Enum):
    """Shape of the per-layer expert popularity."""

    ZIPF = "zipf"
    """Probability proportional to ``rank ** -exponent`` over a random expert order."""
    DIRICHLET = "dirichlet"
    """A symmetric Dirichlet draw with concentration ``dirichlet_alpha``."""


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The MoE dimensions a trace and a simulation need."""

    name: str
    """Model name."""
    num_layers: int
    """MoE layers."""
    num_experts: int
    """Routed experts per layer."""
    top_k: int
    """Experts each token is routed to."""
    hidden: int
    """Model hidden size."""
    expert_ffn: int
    """Intermediate size of one expert's FFN."""

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_experts", "top_k", "hidden", "expert_ffn"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.top_k > self.num_experts:
            raise ConfigError("top_k cannot exceed num_experts")

    @property
    def expert_params(self) -> int:
        """Parameters of one expert (gate, up and down projections)."""
        return 3 * self.hidden * self.expert_ffn


OLMOE_1B_7B = ModelShape("OLMoE-1B-7B", 16, 64, 8, 2048, 1024)
QWEN3_30B_A3B = ModelShape("Qwen3-30B-A3B", 48, 128, 8, 2048, 768)
DEEPSEEK_V3 = ModelShape("DeepSeek-V3", 58, 256, 8, 7168, 2048)
MODEL_SHAPES = {s.name: s for s in (OLMOE_1B_7B, QWEN3_30B_A3B, DEEPSEEK_V3)}


@dataclass(frozen=True, slots=True)
class TraceParams:
    """Knobs of the synthetic trace generator (defaults are the benchmark's workload)."""

    steps: int = 3
    """RL steps."""
    micro_steps: int = 16
    """Gradient-accumulation micro-steps per step (per stage)."""
    dp_ranks: int = 64
    """Data-parallel ranks feeding the expert-parallel group (one per GPU)."""
    sequences_per_rank: int = 4
    """Sequences per micro-step per data-parallel rank."""
    seq_len_tokens: int = 4096
    """Tokens per sequence."""
    responses_per_prompt: int = 16
    """GRPO group size: consecutive sequences sharing a prompt and its routing profile."""
    popularity: Popularity = Popularity.ZIPF
    """Shape of the per-layer expert popularity."""
    zipf_exponent: float = 0.8
    """Zipf exponent of the popularity (fitted to the shipped RL trace, see
    :mod:`llmsys.moe.tracefit`; was 0.3 before the fit)."""
    dirichlet_alpha: float = 2.0
    """Concentration when ``popularity`` is Dirichlet."""
    num_topics: int = 12
    """Topic profiles in the data (math, code, ...)."""
    topic_concentration: float = 1.0
    """How close each topic's expert profile stays to the layer popularity (higher = closer;
    fitted, was 0.25)."""
    mixture_alpha: float = 0.3
    """Dirichlet concentration of a prompt's topic mixture (lower = one topic dominates;
    fitted, was 0.1)."""
    seed: int = 0
    """Random seed."""

    def __post_init__(self) -> None:
        for name in ("steps", "micro_steps", "dp_ranks", "sequences_per_rank", "seq_len_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.responses_per_prompt < 1 or self.num_topics < 1:
            raise ConfigError("responses_per_prompt and num_topics must be >= 1")
        for name in ("zipf_exponent", "dirichlet_alpha", "topic_concentration", "mixture_alpha"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0")

    @property
    def tokens_per_micro(self) -> int:
        """Tokens in one micro-step across all data-parallel ranks."""
        return self.dp_ranks * self.sequences_per_rank * self.seq_len_tokens


@dataclass(frozen=True, slots=True)
class RoutingTrace:
    """Per-expert routed token counts of an RL run.

    Raises:
        InputError: ``loads`` is not 5-D, is negative, or disagrees with ``stages``/``shape``.
    """

    loads: IntArray = field(repr=False)
    """``[steps, stages, micro_steps, layers, experts]`` tokens routed to each expert."""
    stages: tuple[Stage, ...]
    """Stage of each index of axis 1."""
    shape: ModelShape
    """Model the routes come from."""
    tokens_per_micro: int
    """Tokens per micro-step (each routed to ``shape.top_k`` experts)."""

    def __post_init__(self) -> None:
        if self.loads.ndim != 5:
            raise InputError(f"trace loads must be 5-D, got shape {self.loads.shape}")
        if self.loads.shape[1] != len(self.stages):
            raise InputError("trace loads axis 1 must match the stage list")
        if self.loads.shape[3:] != (self.shape.num_layers, self.shape.num_experts):
            raise InputError(
                f"trace loads end in {self.loads.shape[3:]}, model "
                f"{self.shape.name} has {(self.shape.num_layers, self.shape.num_experts)}"
            )
        if (self.loads < 0).any():
            raise InputError("trace loads must be >= 0")

    def arrays(self) -> dict[str, Any]:
        """The npz keys and arrays :meth:`save` writes (a recorder adds its own beside them)."""
        return {
            "loads": self.loads,
            "stages": np.array([s.value for s in self.stages]),
            "shape": np.array(json.dumps(asdict(self.shape))),
            "tokens_per_micro": np.array(self.tokens_per_micro),
            "format_version": np.array(TRACE_FORMAT_VERSION),
        }

    def save(self, path: Path) -> None:
        """Write the trace as a compressed npz file."""
        np.savez_compressed(path, **self.arrays())


def load_trace(path: Path) -> RoutingTrace:
    """Read a trace written by :meth:`RoutingTrace.save` (or a recorder using its format).

    Raises:
        InputError: the file is missing, not an npz, or lacks or mangles a key.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            version = int(data["format_version"])
            if version != TRACE_FORMAT_VERSION:
                raise InputError(f"{path}: trace format {version}, expected {TRACE_FORMAT_VERSION}")
            loads = np.asarray(data["loads"])
            stages = tuple(Stage(str(s)) for s in data["stages"])
            shape = ModelShape(**json.loads(str(data["shape"])))
            tokens = int(data["tokens_per_micro"])
    except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path}: not a routing trace npz ({exc})") from exc
    if loads.dtype.kind not in "iu":
        raise InputError(f"{path}: trace loads must be integers, got {loads.dtype}")
    return RoutingTrace(loads.astype(np.int64), stages, shape, tokens)


def _popularity(rng: np.random.Generator, params: TraceParams, shape: ModelShape) -> FloatArray:
    """``[layers, experts]`` base routing probability per layer."""
    e = shape.num_experts
    if params.popularity is Popularity.ZIPF:
        base = np.arange(1, e + 1, dtype=np.float64) ** -params.zipf_exponent
        pop = np.stack([base[rng.permutation(e)] for _ in range(shape.num_layers)])
    else:
        pop = rng.dirichlet(np.full(e, params.dirichlet_alpha), size=shape.num_layers)
    out: FloatArray = pop / pop.sum(axis=1, keepdims=True)
    return out


def generate_trace(shape: ModelShape, params: TraceParams | None = None) -> RoutingTrace:
    """Draw a synthetic routing trace for ``shape`` (see the module docstring)."""
    p = params if params is not None else TraceParams()
    rng = np.random.default_rng(p.seed)
    pop = _popularity(rng, p, shape)  # [L, E]
    # topic profiles: Dirichlet around the layer popularity
    conc = p.topic_concentration * shape.num_experts * pop
    topics = rng.gamma(np.broadcast_to(conc, (p.num_topics, *pop.shape)))
    topics /= topics.sum(axis=-1, keepdims=True)  # [K, L, E]
    seqs_per_micro = p.dp_ranks * p.sequences_per_rank
    seqs_per_step = seqs_per_micro * p.micro_steps
    routes_per_seq = p.seq_len_tokens * shape.top_k
    loads = np.zeros((p.steps, p.micro_steps, shape.num_layers, shape.num_experts), dtype=np.int64)
    for step in range(p.steps):
        n_prompts = -(-seqs_per_step // p.responses_per_prompt)
        mix = rng.dirichlet(np.full(p.num_topics, p.mixture_alpha), size=n_prompts)
        # sequence order: rank-major shards, consecutive responses of a prompt together
        prompt_of_seq = np.arange(seqs_per_step) // p.responses_per_prompt
        shard = prompt_of_seq.reshape(p.dp_ranks, p.micro_steps, p.sequences_per_rank)
        for micro in range(p.micro_steps):
            prompts, counts = np.unique(shard[:, micro, :], return_counts=True)
            probs = np.einsum("pk,kle->ple", mix[prompts], topics)  # [P, L, E]
            n = (counts * routes_per_seq)[:, None]
            draws = rng.multinomial(np.broadcast_to(n, probs.shape[:2]), probs)
            loads[step, micro] = draws.sum(axis=0)
    stages = (Stage.RECOMPUTE, Stage.UPDATE)
    both = np.repeat(loads[:, None], len(stages), axis=1)
    return RoutingTrace(both, stages, shape, p.tokens_per_micro)
