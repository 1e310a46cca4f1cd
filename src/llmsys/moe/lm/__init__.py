"""llmsys.moe.lm - a real MoE language model, RL post-training with router replay, traces.

Protocol
--------
1. :class:`MoELM` (:class:`MoEConfig`: 4 layers, hidden 128, 32 experts, top-4 by default)
   reads bytes. Its MoE layers route in :attr:`RouteMode.RECORD` (top-k of the live router)
   or :attr:`RouteMode.REPLAY` (given routes, live router scores gathered at them).
2. :func:`pretrain` / :func:`train_checkpoint` train it on this machine's text
   (:func:`build_corpus`: Python standard library, man pages, generated arithmetic);
   :func:`load_model` loads a checkpoint (default: the shipped one, :data:`SHIPPED_CHECKPOINT`).
3. :func:`run_rl` post-trains with GRPO (:class:`RLConfig`) on arithmetic
   (:func:`make_problem`, partial-credit :func:`reward`): rollout with a KV cache recording
   routes, recompute and update replaying them in gradient-accumulation micro-steps.
4. A :class:`RecordedRun` (per-micro-step loads plus per-token routes) is saved as npz and
   read back by :func:`load_recorded` (default: :data:`SHIPPED_TRACE`); its loads are a
   :class:`~llmsys.moe.tracegen.RoutingTrace` for planners and the simulator.

Errors: :class:`~llmsys.core.errors.ConfigError` for bad configurations,
:class:`~llmsys.core.errors.InputError` for bad tensors, checkpoints and trace files.
"""

from llmsys.moe.lm.checkpoint import SHIPPED_CHECKPOINT, load_model, save_checkpoint
from llmsys.moe.lm.config import Balance, MoEConfig
from llmsys.moe.lm.corpus import Corpus, Domain, build_corpus
from llmsys.moe.lm.grpo import RLConfig, StepRecord, rl_step
from llmsys.moe.lm.model import ForwardOut, KVCache, MoELM, RouteMode, expert_forward
from llmsys.moe.lm.pretrain import TrainConfig, TrainLog, pretrain, train_checkpoint
from llmsys.moe.lm.recorded import SHIPPED_TRACE, RecordedRun, load_recorded
from llmsys.moe.lm.rl import RLResult, run_rl
from llmsys.moe.lm.rollout import Rollout, rollout
from llmsys.moe.lm.tasks import Problem, make_problem, reward

__all__ = [
    "SHIPPED_CHECKPOINT",
    "SHIPPED_TRACE",
    "Balance",
    "Corpus",
    "Domain",
    "ForwardOut",
    "KVCache",
    "MoEConfig",
    "MoELM",
    "Problem",
    "RLConfig",
    "RLResult",
    "RecordedRun",
    "Rollout",
    "RouteMode",
    "StepRecord",
    "TrainConfig",
    "TrainLog",
    "build_corpus",
    "expert_forward",
    "load_model",
    "load_recorded",
    "make_problem",
    "pretrain",
    "reward",
    "rl_step",
    "rollout",
    "run_rl",
    "save_checkpoint",
    "train_checkpoint",
]
