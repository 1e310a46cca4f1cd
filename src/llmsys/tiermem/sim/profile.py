"""Hardware profiles: where the simulator's time comes from.

A :class:`HardwareProfile` says how long the engine's own work takes (prefill as a function
of new tokens and context, decode, fixed per-request and per-block costs), how big KV is
(``kv_bytes_per_token``, ``block_tokens``) and what each tier link costs (a
:class:`~llmsys.tiermem.TransferModel` per tier, the very type the store's metadata-only
tiers wait on). Profiles live in TOML files in ``profiles/`` (``h100-cmm``, from public
figures, each with its source; ``this-machine``, calibrated here by
:mod:`llmsys.tiermem.sim.calibrate`) or anywhere on disk::

    name = "h100-cmm"
    kv_bytes_per_token = 131072
    ...
    [tiers.cxl]          # latency_s, read_bytes_per_s, write_bytes_per_s
    [sources]            # field -> where the figure comes from
    [calibration]        # optional: how a calibrated profile was fitted and validated

Unknown keys, missing keys and out-of-range values raise :class:`ProfileError`.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from llmsys.tiermem.errors import TierConfigError
from llmsys.tiermem.tiers.base import TierKind, TransferModel

__all__ = [
    "Calibration",
    "HardwareProfile",
    "ProfileError",
    "load_profile",
    "profile_names",
    "profile_to_toml",
]

PROFILE_DIR = Path(__file__).with_name("profiles")
"""Where named profiles live."""


class ProfileError(TierConfigError):
    """A profile file is missing, malformed, has unknown keys or out-of-range values."""


@dataclass(frozen=True, slots=True)
class Calibration:
    """How a calibrated profile was fitted (``fit_ratios``) and validated (held-out)."""

    fit_ratios: tuple[int, ...]
    """Footprint/dram ratios whose serving runs the fit saw."""
    held_out_ratios: tuple[int, ...]
    """Ratios predicted without being seen."""
    errors: dict[str, dict[str, float]]
    """``{config: {ratio: (simulated - measured) / measured}}`` of throughput, held-out."""
    error_max: float
    """Largest ``abs`` of ``errors``."""
    serving_runs: str
    """The serving-run JSON the fit used (path and date)."""

    def __post_init__(self) -> None:
        """Raises: ProfileError: overlapping ratio sets or a negative ``error_max``."""
        if set(self.fit_ratios) & set(self.held_out_ratios):
            raise ProfileError("calibration: fitted and held-out ratios overlap")
        if not self.error_max >= 0:
            raise ProfileError("calibration: error_max must be >= 0")


@dataclass(frozen=True, slots=True)
class HardwareProfile:
    """Time and size figures of one machine + model (see the module docstring)."""

    name: str
    """Profile name (the file's stem for named profiles)."""
    description: str
    """What machine and model the figures describe."""
    kv_bytes_per_token: int
    """KV bytes of one token over all layers."""
    block_tokens: int
    """Tokens per KV block (one store block)."""
    prefill_chunk_blocks: int
    """Blocks per prefill forward pass; cache hits are used in whole chunks."""
    trace_tokens_per_hash: int
    """Tokens each 512-token Mooncake hash block becomes (512: real scale)."""
    prefill_pass_s: float
    """Fixed cost of one prefill forward pass."""
    prefill_token_s: float
    """Prefill cost per new token (the linear layers)."""
    prefill_pair_s: float
    """Prefill attention cost per (new token, attended token) pair."""
    decode_token_s: float
    """Cost of one decode step per request (amortised over the batch where batched)."""
    decode_context_token_s: float
    """Extra decode-step cost per context token (reading its KV)."""
    request_overhead_s: float
    """Fixed engine cost per request (scheduling, hashing, bookkeeping)."""
    load_block_overhead_s: float
    """Engine cost per loaded block beyond the tier transfer (e.g. building the cache)."""
    save_block_overhead_s: float
    """Engine cost per block gathered for saving, on the engine's critical path (every
    block after the cached prefix, as ``blocks_from_cache``)."""
    async_saves: bool
    """Whether saves (and the demotions they trigger) are write-back, never waited for, as
    GPU offloading connectors do; false: the engine waits for a request's saves (which
    overlap its decode) before it finishes, as the real engine here does."""
    tiers: dict[TierKind, TransferModel]
    """Link cost per tier: dram is the engine <-> host-memory path (host-to-device on a
    GPU), cxl / ssd / remote their devices."""
    sources: dict[str, str] = field(default_factory=dict)
    """Field or tier name -> where its figure comes from."""
    calibration: Calibration | None = None
    """How the profile was fitted, if it was."""

    def __post_init__(self) -> None:
        """Raises: ProfileError: a size < 1, a negative or non-finite time, or no dram link."""
        for name in ("kv_bytes_per_token", "block_tokens", "prefill_chunk_blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ProfileError(f"profile {self.name}: {name} must be an integer >= 1")
        if not isinstance(self.trace_tokens_per_hash, int) or self.trace_tokens_per_hash < 1:
            raise ProfileError(f"profile {self.name}: trace_tokens_per_hash must be >= 1")
        for name in _TIME_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ProfileError(f"profile {self.name}: {name} must be a finite time >= 0 s")
        if not isinstance(self.async_saves, bool):
            raise ProfileError(f"profile {self.name}: async_saves must be true or false")
        if TierKind.DRAM not in self.tiers:
            raise ProfileError(f"profile {self.name}: needs a [tiers.dram] link")

    @property
    def block_bytes(self) -> int:
        """Bytes of one KV block."""
        return self.block_tokens * self.kv_bytes_per_token

    @property
    def chunk_tokens(self) -> int:
        """Tokens per prefill forward pass."""
        return self.block_tokens * self.prefill_chunk_blocks

    def usable_cached_tokens(self, hit_tokens: int, prompt_tokens: int) -> int:
        """Cached tokens the engine uses: whole chunks, fewer than the prompt (as
        :meth:`~llmsys.tiermem.serving.ModelRunner.usable_cached_tokens`)."""
        step = self.chunk_tokens
        return max(0, min(hit_tokens, prompt_tokens - 1) // step * step)

    def prefill_s(self, prompt_tokens: int, cached_tokens: int) -> float:
        """Seconds to prefill ``prompt_tokens - cached_tokens`` tokens on the chunk grid."""
        new = prompt_tokens - cached_tokens
        if new <= 0:
            return 0.0
        step = self.chunk_tokens
        passes = -(-prompt_tokens // step) - cached_tokens // step
        pairs = new * cached_tokens + new * (new + 1) / 2
        return (
            passes * self.prefill_pass_s + new * self.prefill_token_s + pairs * self.prefill_pair_s
        )

    def decode_s(self, prompt_tokens: int, new_tokens: int) -> float:
        """Seconds of the ``new_tokens - 1`` decode steps after the prefill's first token."""
        steps = max(0, new_tokens - 1)
        context = steps * prompt_tokens + steps * (steps + 1) / 2
        return steps * self.decode_token_s + context * self.decode_context_token_s


_TIME_FIELDS = (
    "prefill_pass_s",
    "prefill_token_s",
    "prefill_pair_s",
    "decode_token_s",
    "decode_context_token_s",
    "request_overhead_s",
    "load_block_overhead_s",
    "save_block_overhead_s",
)
_SCALARS = {f.name for f in fields(HardwareProfile)} - {"tiers", "sources", "calibration"}


def profile_names() -> list[str]:
    """Names of the profiles shipped in ``profiles/``."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """Load a named profile (``h100-cmm``) or a TOML file.

    Raises:
        ProfileError: unknown name, unreadable or malformed file, unknown/missing keys or
            out-of-range values.
    """
    path = Path(name_or_path)
    if path.suffix != ".toml":
        if str(name_or_path) not in profile_names():
            known = ", ".join(profile_names())
            raise ProfileError(f"unknown profile {name_or_path!r}; known: {known} (or a .toml)")
        path = PROFILE_DIR / f"{name_or_path}.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc}") from exc
    try:
        return profile_from_dict(data)
    except ProfileError as exc:
        raise ProfileError(f"{path}: {exc}") from exc


def profile_from_dict(data: dict[str, Any]) -> HardwareProfile:
    """Build a profile from parsed TOML.

    Raises:
        ProfileError: unknown or missing keys, wrong types, out-of-range values.
    """
    unknown = set(data) - _SCALARS - {"tiers", "sources", "calibration"}
    if unknown:
        raise ProfileError(f"unknown profile keys: {sorted(unknown)}")
    missing = _SCALARS - set(data)
    if missing:
        raise ProfileError(f"missing profile keys: {sorted(missing)}")
    tiers: dict[TierKind, TransferModel] = {}
    raw_tiers = data.get("tiers", {})
    if not isinstance(raw_tiers, dict):
        raise ProfileError("[tiers] must be a table")
    for tier_name, spec in raw_tiers.items():
        try:
            kind = TierKind(tier_name)
        except ValueError:
            raise ProfileError(f"unknown tier [tiers.{tier_name}]") from None
        keys = {"latency_s", "read_bytes_per_s", "write_bytes_per_s"}
        if not isinstance(spec, dict) or set(spec) != keys:
            raise ProfileError(f"[tiers.{tier_name}] needs exactly {sorted(keys)}")
        try:
            tiers[kind] = TransferModel(**{k: float(v) for k, v in spec.items()})
        except (TierConfigError, TypeError, ValueError) as exc:
            raise ProfileError(f"[tiers.{tier_name}]: {exc}") from None
    sources = data.get("sources", {})
    if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
        raise ProfileError("[sources] must map names to strings")
    calibration = None
    if "calibration" in data:
        calibration = _calibration(data["calibration"])
    scalars = {k: data[k] for k in _SCALARS}
    for name in _TIME_FIELDS:
        if isinstance(scalars[name], int) and not isinstance(scalars[name], bool):
            scalars[name] = float(scalars[name])
    return HardwareProfile(**scalars, tiers=tiers, sources=sources, calibration=calibration)


def _calibration(raw: Any) -> Calibration:
    keys = {"fit_ratios", "held_out_ratios", "errors", "error_max", "serving_runs"}
    if not isinstance(raw, dict) or set(raw) != keys:
        raise ProfileError(f"[calibration] needs exactly {sorted(keys)}")
    try:
        errors = {
            str(c): {str(r): float(e) for r, e in by_ratio.items()}
            for c, by_ratio in raw["errors"].items()
        }
        return Calibration(
            fit_ratios=tuple(int(r) for r in raw["fit_ratios"]),
            held_out_ratios=tuple(int(r) for r in raw["held_out_ratios"]),
            errors=errors,
            error_max=float(raw["error_max"]),
            serving_runs=str(raw["serving_runs"]),
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise ProfileError(f"[calibration]: {exc}") from None


def _toml_value(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def profile_to_toml(profile: HardwareProfile, header: str = "") -> str:
    """The profile as TOML text that :func:`load_profile` reads back to an equal profile."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for f in fields(HardwareProfile):
        if f.name in _SCALARS:
            lines.append(f"{f.name} = {_toml_value(getattr(profile, f.name))}")
    for kind, model in profile.tiers.items():
        lines += [
            "",
            f"[tiers.{kind.value}]",
            f"latency_s = {model.latency_s!r}",
            f"read_bytes_per_s = {model.read_bytes_per_s!r}",
            f"write_bytes_per_s = {model.write_bytes_per_s!r}",
        ]
    if profile.sources:
        lines += ["", "[sources]"]
        lines += [f'"{k}" = {_toml_value(v)}' for k, v in profile.sources.items()]
    cal = profile.calibration
    if cal is not None:
        lines += [
            "",
            "[calibration]",
            f"fit_ratios = {_toml_value(cal.fit_ratios)}",
            f"held_out_ratios = {_toml_value(cal.held_out_ratios)}",
            f"error_max = {cal.error_max!r}",
            f"serving_runs = {_toml_value(cal.serving_runs)}",
        ]
        for config, by_ratio in cal.errors.items():
            lines += ["", f'[calibration.errors."{config}"]']
            lines += [f'"{r}" = {e!r}' for r, e in by_ratio.items()]
    return "\n".join(lines) + "\n"
