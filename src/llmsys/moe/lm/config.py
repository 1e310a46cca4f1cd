"""Configuration of the tiny MoE language model and its byte-level vocabulary.

The model reads bytes: ids ``0..255`` are the bytes themselves, then three specials
(:data:`BOS`, :data:`EOS`, :data:`PAD`). A byte vocabulary needs no tokenizer download and
makes "which experts does Python source use versus man-page prose versus digits" visible
in the routing.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any

from llmsys.core.errors import ConfigError
from llmsys.moe.tracegen import ModelShape

BOS = 256
"""Begin-of-sequence id."""
EOS = 257
"""End-of-sequence id (unused by the arithmetic task, which ends answers with a newline)."""
PAD = 258
"""Padding id; never attended to and never a training target."""
VOCAB_SIZE = 260
"""Bytes, three specials, one spare (an even size)."""


class Balance(enum.Enum):
    """Load-balancing mechanism of the router during training."""

    AUX_LOSS = "aux_loss"
    """Switch-Transformer auxiliary loss ``E * sum_e f_e * P_e`` per layer."""
    NONE = "none"
    """No balancing term (routes follow the data)."""


@dataclass(frozen=True, slots=True)
class MoEConfig:
    """Dimensions of :class:`~llmsys.moe.lm.model.MoELM`.

    Raises:
        ConfigError: a dimension is not positive, ``top_k`` exceeds ``num_experts``, or
            ``hidden`` is not a multiple of ``num_heads``.
    """

    num_layers: int = 4
    """Transformer blocks, each with one MoE FFN."""
    hidden: int = 128
    """Model width."""
    num_heads: int = 4
    """Attention heads."""
    num_experts: int = 32
    """Routed experts per layer."""
    top_k: int = 4
    """Experts each token is routed to."""
    expert_ffn: int = 128
    """Intermediate size of one expert's SwiGLU FFN."""
    shared_expert: bool = False
    """Add one always-on expert of width ``expert_ffn`` per layer (DeepSeek-style)."""
    max_seq_tokens: int = 512
    """Longest sequence (learned absolute positions)."""
    balance: Balance = Balance.AUX_LOSS
    """Router load-balancing mechanism."""
    aux_loss_coef: float = 0.01
    """Weight of the auxiliary balancing loss."""

    def __post_init__(self) -> None:
        for name in (
            "num_layers",
            "hidden",
            "num_heads",
            "num_experts",
            "top_k",
            "expert_ffn",
            "max_seq_tokens",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"MoEConfig.{name} must be >= 1")
        if self.top_k > self.num_experts:
            raise ConfigError("MoEConfig.top_k cannot exceed num_experts")
        if self.hidden % self.num_heads:
            raise ConfigError("MoEConfig.hidden must be a multiple of num_heads")
        if self.aux_loss_coef < 0:
            raise ConfigError("MoEConfig.aux_loss_coef must be >= 0")

    @property
    def shape(self) -> ModelShape:
        """The trace/simulator view of this model."""
        return ModelShape(
            "llmsys-moe-tiny",
            self.num_layers,
            self.num_experts,
            self.top_k,
            self.hidden,
            self.expert_ffn,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the enum as its value)."""
        out = asdict(self)
        out["balance"] = self.balance.value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MoEConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: unknown keys or bad values.
        """
        try:
            fields = dict(data)
            fields["balance"] = Balance(fields.get("balance", Balance.AUX_LOSS.value))
            return cls(**fields)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"bad MoE model config: {exc}") from exc
