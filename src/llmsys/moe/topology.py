"""Cluster topology for expert placement: nodes x GPUs per node x expert slots per GPU.

Protocol: a :class:`Topology` numbers physical expert slots GPU-major, so global slot
``s`` lives on GPU ``s // slots_per_gpu`` and GPU ``g`` on node ``g // gpus_per_node``.
:func:`home_layout` pins each logical expert to one *home* slot (experts spread as evenly as
possible, contiguous blocks per GPU, the way Megatron's expert parallelism lays them out);
every other slot is *redundant* and may hold a replica of any expert. Home experts keep
their weights and optimizer state; replicas are copies that planners may change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from llmsys.core.errors import ConfigError

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Topology:
    """Shape of an expert-parallel group.

    Raises:
        ConfigError: a count is below 1.
    """

    num_nodes: int
    """Machines in the expert-parallel group."""
    gpus_per_node: int
    """GPUs per machine; all-to-all inside a node runs over NVLink."""
    slots_per_gpu: int
    """Expert slots (room for one expert's weights each) per GPU."""

    def __post_init__(self) -> None:
        for name in ("num_nodes", "gpus_per_node", "slots_per_gpu"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")

    @property
    def num_gpus(self) -> int:
        """GPUs in the group."""
        return self.num_nodes * self.gpus_per_node

    @property
    def num_slots(self) -> int:
        """Physical expert slots in the group."""
        return self.num_gpus * self.slots_per_gpu

    def slot_gpu(self) -> IntArray:
        """``[num_slots]`` GPU index of each slot."""
        return np.arange(self.num_slots, dtype=np.int64) // self.slots_per_gpu

    def gpu_node(self) -> IntArray:
        """``[num_gpus]`` node index of each GPU."""
        return np.arange(self.num_gpus, dtype=np.int64) // self.gpus_per_node

    def check_experts(self, num_experts: int) -> None:
        """Raise :class:`ConfigError` unless every expert can have a slot."""
        if num_experts < 1:
            raise ConfigError(f"need at least one expert, got {num_experts}")
        if num_experts > self.num_slots:
            raise ConfigError(
                f"{num_experts} experts need at least as many slots, but the topology has "
                f"{self.num_slots} ({self.num_nodes} nodes x {self.gpus_per_node} GPUs x "
                f"{self.slots_per_gpu} slots)"
            )


@dataclass(frozen=True, slots=True)
class HomeLayout:
    """Where each logical expert lives permanently, per layer, and which slots are redundant.

    GPU ``g`` keeps its home experts in its first ``home_counts[g]`` slots in every layer;
    the remaining slots are redundant.

    Raises:
        ConfigError: shapes disagree with the topology, or a layer's homes are not a
            permutation of the experts.
    """

    topology: Topology
    """The topology the layout is for."""
    num_experts: int
    """Logical experts per layer."""
    home_table: IntArray = field(repr=False)
    """``[num_layers, num_gpus, max_homes]`` experts homed on each GPU (padding is 0)."""
    home_valid: BoolArray = field(repr=False)
    """``[num_gpus, max_homes]`` which entries of ``home_table`` are real."""

    def __post_init__(self) -> None:
        t = self.topology
        if self.home_table.ndim != 3 or self.home_table.shape[1:] != self.home_valid.shape:
            raise ConfigError("home_table must be [layers, num_gpus, max_homes] like home_valid")
        if self.home_valid.shape[0] != t.num_gpus or self.home_valid.shape[1] > t.slots_per_gpu:
            raise ConfigError("home layout does not fit the topology's GPUs and slots")
        homes = np.sort(self.home_table[:, self.home_valid], axis=1)
        if homes.shape[1] != self.num_experts or (homes != np.arange(self.num_experts)).any():
            raise ConfigError("every layer's home slots must hold each expert exactly once")

    @property
    def num_layers(self) -> int:
        """Layers covered."""
        return int(self.home_table.shape[0])

    @property
    def home_counts(self) -> IntArray:
        """``[num_gpus]`` home experts per GPU."""
        counts: IntArray = self.home_valid.sum(axis=1).astype(np.int64)
        return counts

    def home_slots(self) -> IntArray:
        """``[num_gpus, max_homes]`` global slot of each home entry (padding included)."""
        t = self.topology
        rank = np.arange(self.home_valid.shape[1], dtype=np.int64)
        return np.arange(t.num_gpus, dtype=np.int64)[:, None] * t.slots_per_gpu + rank[None, :]

    def home_slot(self) -> IntArray:
        """``[num_layers, num_experts]`` global slot index of each expert's home."""
        experts = self.home_table[:, self.home_valid]  # [L, n_homes]
        slots = self.home_slots()[self.home_valid]  # [n_homes]
        out = np.zeros((self.num_layers, self.num_experts), dtype=np.int64)
        out[np.arange(self.num_layers)[:, None], experts] = slots[None, :]
        return out

    def redundant_slots(self) -> IntArray:
        """``[num_redundant]`` global indices of slots that hold no home expert."""
        t = self.topology
        within = np.arange(t.num_slots, dtype=np.int64) % t.slots_per_gpu
        return np.flatnonzero(within >= self.home_counts[t.slot_gpu()]).astype(np.int64)


def home_counts(topology: Topology, num_experts: int) -> IntArray:
    """``[num_gpus]`` home experts per GPU: near-equal, the first GPUs take the extra one."""
    topology.check_experts(num_experts)
    g = topology.num_gpus
    counts = np.full(g, num_experts // g, dtype=np.int64)
    counts[: num_experts % g] += 1
    return counts


def home_layout(topology: Topology, num_experts: int, num_layers: int = 1) -> HomeLayout:
    """Pin experts to GPUs in contiguous blocks, the same in every layer (static EP).

    Raises:
        ConfigError: more experts than slots.
    """
    counts = home_counts(topology, num_experts)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(int(counts.max()), dtype=np.int64)
    valid = rank[None, :] < counts[:, None]
    table = np.where(valid, starts[:, None] + rank[None, :], 0)
    return HomeLayout(topology, num_experts, np.repeat(table[None], num_layers, axis=0), valid)
