"""The placement record every policy returns, its invariants, and its JSON form.

Protocol: a :class:`Placement` says, per layer, which logical expert sits in each physical
slot (slots numbered GPU-major, see :mod:`llmsys.moe.topology`) and how many tokens each
slot computes. :meth:`Placement.check_against` proves it serves a load matrix: every expert
has a slot, each expert's tokens are conserved exactly across its replicas, and tokens go
only to slots holding that expert. The JSON object (``to_json`` / ``from_json``) is the
``llmsys moe plan --json`` output and is accepted back as ``--previous``.

A slot *moves* (:func:`slots_moved`) when it now holds an expert whose weights it did not
hold before; emptying a slot moves nothing.

:class:`ReplicaCost` prices what a replica costs besides its tokens: every slot that
computes tokens pays a fixed per-group cost (kernel launches, framework overhead), and a
slot that computes tokens with weights it did not hold pays a move. :func:`gpu_cost` gives
each GPU's modelled time in token-equivalents; a planner keeps a replica only where it
lowers the busiest GPU's cost.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from llmsys.core.errors import ConfigError, InputError
from llmsys.moe.topology import Topology

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]


class Policy(enum.Enum):
    """Placement policies; the value is the CLI name."""

    FOREMOE = "foremoe"
    """Hierarchical micro-step planner with foresight and migration-aware slot matching."""
    EPLB = "eplb"
    """DeepSeek EPLB, planned once per step from a moving average of past steps."""
    REACTIVE = "reactive"
    """Per-micro-step replication from the current router output, no foresight."""
    STATIC = "static"
    """Plain expert parallelism: home slots only, no replicas."""
    MILP = "milp"
    """Exact mixed-integer program (HiGHS); small instances only."""


@dataclass(frozen=True, slots=True)
class ReplicaCost:
    """Fixed costs of computing on a slot, in tokens of one expert's compute.

    A GPU's modelled time for one layer is ``tokens + group_cost_tokens * non-empty slots
    + move_cost_tokens * slots computing with newly moved weights`` (:func:`gpu_cost`).
    Measure both on the machine that runs the plan: the intercept and the per-token slope
    of one expert's time against its rows give ``group_cost_tokens = intercept / slope``.

    Raises:
        ConfigError: a cost is negative or not finite.
    """

    group_cost_tokens: float
    """Fixed cost of one non-empty expert slot in one pass (forward + backward in an update
    stage), as the number of tokens that expert computes in the same time."""
    move_cost_tokens: float = 0.0
    """Cost, on the receiving GPU, of a slot computing with weights it did not hold before
    (0 when the transfer hides fully under compute)."""

    def __post_init__(self) -> None:
        for name in ("group_cost_tokens", "move_cost_tokens"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ConfigError(f"ReplicaCost.{name} must be finite and >= 0, got {value}")


def gpu_cost(
    slot_tokens: IntArray, moved: BoolArray, topology: Topology, cost: ReplicaCost
) -> FloatArray:
    """``[num_layers, num_gpus]`` modelled time of each GPU in token-equivalents.

    Args:
        slot_tokens: ``[num_layers, num_slots]`` tokens each slot computes.
        moved: ``[num_layers, num_slots]`` slots whose weights were moved in (only slots
            that compute tokens pay for it).
        topology: cluster shape (slots are GPU-major).
        cost: fixed costs per slot.
    """
    busy = slot_tokens > 0
    per_slot = slot_tokens + cost.group_cost_tokens * busy + cost.move_cost_tokens * (busy & moved)
    out: FloatArray = per_slot.reshape(slot_tokens.shape[0], topology.num_gpus, -1).sum(-1)
    return out


class InvalidPlacementError(InputError):
    """A placement breaks an invariant (shape, expert id, token conservation, slot use)."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Expert placement and token split for every layer of one micro-step.

    Raises:
        InvalidPlacementError: shapes disagree with the topology, an expert id is out of
            range, tokens are negative, or an empty slot has tokens.
    """

    policy: Policy
    """Policy that produced it."""
    topology: Topology
    """Cluster shape the slots refer to."""
    num_experts: int
    """Logical experts per layer."""
    slot_expert: IntArray = field(repr=False)
    """``[num_layers, num_slots]`` logical expert in each slot (meaningless where empty)."""
    slot_filled: BoolArray = field(repr=False)
    """``[num_layers, num_slots]`` whether the slot holds an expert."""
    slot_tokens: IntArray = field(repr=False)
    """``[num_layers, num_slots]`` tokens each slot computes."""

    def __post_init__(self) -> None:
        shape = self.slot_expert.shape
        if len(shape) != 2 or shape[1] != self.topology.num_slots:
            raise InvalidPlacementError(
                f"slot_expert must be [layers, {self.topology.num_slots}], got {shape}"
            )
        if self.slot_filled.shape != shape or self.slot_tokens.shape != shape:
            raise InvalidPlacementError("slot_expert, slot_filled and slot_tokens differ in shape")
        ids = self.slot_expert[self.slot_filled]
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_experts):
            raise InvalidPlacementError(f"expert ids must lie in [0, {self.num_experts})")
        if (self.slot_tokens < 0).any():
            raise InvalidPlacementError("slot_tokens must be >= 0")
        if (self.slot_tokens[~self.slot_filled] != 0).any():
            raise InvalidPlacementError("an empty slot was given tokens")

    @property
    def num_layers(self) -> int:
        """Layers covered."""
        return int(self.slot_expert.shape[0])

    def gpu_tokens(self) -> IntArray:
        """``[num_layers, num_gpus]`` tokens each GPU computes."""
        t = self.topology
        out: IntArray = self.slot_tokens.reshape(self.num_layers, t.num_gpus, -1).sum(-1)
        return out

    def imbalance(self) -> FloatArray:
        """``[num_layers]`` max / mean GPU tokens (1.0 for a layer with no tokens)."""
        gpu = self.gpu_tokens().astype(np.float64)
        mean = gpu.mean(axis=1)
        return np.where(mean > 0, gpu.max(axis=1) / np.where(mean > 0, mean, 1.0), 1.0)

    def expert_tokens(self) -> IntArray:
        """``[num_layers, num_experts]`` tokens served per logical expert."""
        out = np.zeros((self.num_layers, self.num_experts), dtype=np.int64)
        rows = np.broadcast_to(np.arange(self.num_layers)[:, None], self.slot_expert.shape)
        f = self.slot_filled
        np.add.at(out, (rows[f], self.slot_expert[f]), self.slot_tokens[f])
        return out

    def replica_counts(self) -> IntArray:
        """``[num_layers, num_experts]`` slots holding each expert."""
        out = np.zeros((self.num_layers, self.num_experts), dtype=np.int64)
        rows = np.broadcast_to(np.arange(self.num_layers)[:, None], self.slot_expert.shape)
        f = self.slot_filled
        np.add.at(out, (rows[f], self.slot_expert[f]), 1)
        return out

    def modelled_cost(self, cost: ReplicaCost, previous: Placement | None = None) -> FloatArray:
        """``[num_layers, num_gpus]`` :func:`gpu_cost` of this placement.

        A slot pays a move when ``previous`` did not hold its expert there; without
        ``previous`` no slot pays one.

        Raises:
            InvalidPlacementError: ``previous`` has another shape.
        """
        moved = np.zeros_like(self.slot_filled) if previous is None else _moved(previous, self)
        return gpu_cost(self.slot_tokens, moved, self.topology, cost)

    def check_against(self, load: IntArray) -> None:
        """Raise :class:`InvalidPlacementError` unless this placement serves ``load``.

        Args:
            load: ``[num_layers, num_experts]`` tokens routed to each expert.
        """
        if load.shape != (self.num_layers, self.num_experts):
            raise InvalidPlacementError(
                f"load is {load.shape}, placement covers {(self.num_layers, self.num_experts)}"
            )
        missing = np.argwhere(self.replica_counts() == 0)
        if missing.size:
            layer, expert = missing[0]
            raise InvalidPlacementError(f"layer {layer}: expert {expert} has no slot")
        served = self.expert_tokens()
        bad = np.argwhere(served != load)
        if bad.size:
            layer, expert = bad[0]
            raise InvalidPlacementError(
                f"layer {layer}: expert {expert} routed {load[layer, expert]} tokens, "
                f"its slots serve {served[layer, expert]}"
            )

    def to_json(self) -> dict[str, Any]:
        """The ``llmsys moe plan --json`` object (null marks an empty slot)."""
        layers = []
        gpu_tokens = self.gpu_tokens()
        for i in range(self.num_layers):
            experts = self.slot_expert[i].tolist()
            filled = self.slot_filled[i].tolist()
            layers.append(
                {
                    "slot_expert": [e if f else None for e, f in zip(experts, filled, strict=True)],
                    "slot_tokens": self.slot_tokens[i].tolist(),
                    "gpu_tokens": gpu_tokens[i].tolist(),
                }
            )
        return {"policy": self.policy.value, "layers": layers}

    @classmethod
    def from_json(
        cls, obj: Any, topology: Topology, num_experts: int, source: str = "placement"
    ) -> Placement:
        """Rebuild a placement from its JSON object, checked against ``topology``.

        Raises:
            InvalidPlacementError: the object is malformed or does not fit the topology.
        """
        if not isinstance(obj, dict) or not isinstance(obj.get("layers"), list):
            raise InvalidPlacementError(f"{source}: expected an object with a 'layers' list")
        try:
            policy = Policy(obj.get("policy", "static"))
        except ValueError as exc:
            raise InvalidPlacementError(f"{source}: unknown policy {obj.get('policy')!r}") from exc
        n_layers, n_slots = len(obj["layers"]), topology.num_slots
        expert = np.zeros((n_layers, n_slots), dtype=np.int64)
        filled = np.zeros((n_layers, n_slots), dtype=bool)
        tokens = np.zeros((n_layers, n_slots), dtype=np.int64)
        for i, layer in enumerate(obj["layers"]):
            slots = layer.get("slot_expert") if isinstance(layer, dict) else None
            if not isinstance(slots, list) or len(slots) != n_slots:
                raise InvalidPlacementError(
                    f"{source}: layer {i} slot_expert must be a list of {n_slots} entries "
                    f"(nodes x GPUs x slots)"
                )
            for s, e in enumerate(slots):
                if e is None:
                    continue
                if isinstance(e, bool) or not isinstance(e, int):
                    raise InvalidPlacementError(f"{source}: layer {i} slot {s}: bad id {e!r}")
                expert[i, s], filled[i, s] = e, True
            tok = layer.get("slot_tokens", [0] * n_slots)
            if not isinstance(tok, list) or len(tok) != n_slots:
                raise InvalidPlacementError(f"{source}: layer {i} slot_tokens has wrong length")
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in tok):
                raise InvalidPlacementError(f"{source}: layer {i} slot_tokens must be integers")
            tokens[i] = tok
        return cls(policy, topology, num_experts, expert, filled, tokens)


def _moved(previous: Placement, current: Placement) -> BoolArray:
    """``[num_layers, num_slots]`` slots of ``current`` holding an expert ``previous`` did
    not hold there."""
    if previous.slot_expert.shape != current.slot_expert.shape:
        raise InvalidPlacementError(
            f"previous placement is {previous.slot_expert.shape}, "
            f"current is {current.slot_expert.shape}"
        )
    same = previous.slot_filled & (previous.slot_expert == current.slot_expert)
    moved: BoolArray = current.slot_filled & ~same
    return moved


def slots_moved(previous: Placement | None, current: Placement) -> IntArray:
    """``[num_layers]`` slots that now hold an expert they did not hold before.

    With no previous placement every filled slot counts as moved (cold start).
    """
    mask = current.slot_filled if previous is None else _moved(previous, current)
    out: IntArray = mask.sum(axis=1).astype(np.int64)
    return out
