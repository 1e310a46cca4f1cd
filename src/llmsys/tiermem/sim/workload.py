"""What the simulator replays: requests reduced to block keys and lengths.

A :class:`SimRequest` is a request as the store sees it - the keys of its prompt's full
blocks, keyed exactly as the real connector keys them (chained prefix hashes in a
:class:`~llmsys.tiermem.Namespace` whose ``block_bytes`` is the profile's) - plus its
prompt and output lengths, which the profile turns into compute time. Two sources:

- :func:`requests_from_trace` - a Mooncake-format trace, without materialising random
  tokens: hash block ``h`` becomes ``trace_tokens_per_hash`` copies of token ``h`` (equal
  hashes, equal tokens; the chain makes position part of every key), lengths scale as
  :func:`~llmsys.tiermem.serving.read_mooncake_trace` scales them.
- :func:`requests_from_serving` - the real engine's :class:`~llmsys.tiermem.serving.Request`
  list (token ids), for replaying a measured serving run request for request.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmsys.core.errors import InputError
from llmsys.tiermem.keys import BlockKey, Namespace, PrefixHasher, chain_keys
from llmsys.tiermem.serving.workloads import MOONCAKE_BLOCK_TOKENS, Request
from llmsys.tiermem.sim.profile import HardwareProfile

__all__ = [
    "SimRequest",
    "footprint_bytes",
    "requests_from_serving",
    "requests_from_trace",
    "sim_namespace",
]


@dataclass(frozen=True, slots=True)
class SimRequest:
    """One request as the simulator sees it."""

    request_id: str
    """Unique id within the workload."""
    keys: tuple[BlockKey, ...]
    """Keys of the prompt's full blocks (``[prompt_tokens // block_tokens]``)."""
    prompt_tokens: int
    """Prompt length (>= 1)."""
    output_tokens: int
    """Tokens generated (>= 1)."""
    namespace: Namespace
    """Namespace the keys belong to (its ``block_bytes`` sizes the store's blocks)."""

    def __post_init__(self) -> None:
        """Raises: InputError: empty prompt, no output, or more keys than full blocks."""
        if self.prompt_tokens < 1 or self.output_tokens < 1:
            raise InputError(f"request {self.request_id}: prompt and output must be >= 1 token")
        if len(self.keys) > self.prompt_tokens // self.namespace.block_tokens:
            raise InputError(f"request {self.request_id}: more keys than full prompt blocks")


def sim_namespace(profile: HardwareProfile) -> Namespace:
    """The namespace of simulated blocks under ``profile`` (its block geometry)."""
    return Namespace(
        f"sim:{profile.name}",
        "simulated",
        "simulated",
        profile.block_tokens,
        profile.block_bytes,
    )


def requests_from_trace(
    path: Path,
    profile: HardwareProfile,
    *,
    requests: int | None = None,
    skip: int = 0,
) -> list[SimRequest]:
    """Read a Mooncake-format JSONL trace (``timestamp``, ``input_length``,
    ``output_length``, ``hash_ids``) into simulated requests.

    Raises:
        InputError: unreadable file, malformed line (file and line named), bad counts.
    """
    if requests is not None and requests < 1:
        raise InputError("requests must be >= 1")
    if skip < 0:
        raise InputError("skip must be >= 0")
    ns = sim_namespace(profile)
    per_hash = profile.trace_tokens_per_hash
    scale = per_hash / MOONCAKE_BLOCK_TOKENS
    out: list[SimRequest] = []
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read trace: {exc}") from exc
    with handle:
        for lineno, line in enumerate(handle, start=1):
            if lineno <= skip or not line.strip():
                continue
            if requests is not None and len(out) >= requests:
                break
            try:
                rec = json.loads(line)
                hash_ids = np.asarray([int(h) for h in rec["hash_ids"]], dtype=np.int64)
                input_length = int(rec["input_length"])
                output_length = int(rec["output_length"])
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"{path}:{lineno}: malformed trace record: {exc}") from exc
            if hash_ids.size == 0 or input_length < 1 or output_length < 0:
                raise InputError(f"{path}:{lineno}: empty hash_ids or invalid lengths")
            if int(hash_ids.min()) < 0 or int(hash_ids.max()) >= 2**32:
                raise InputError(f"{path}:{lineno}: hash_ids must lie in [0, 2^32)")
            n_tokens = min(hash_ids.size * per_hash, max(1, math.ceil(input_length * scale)))
            tokens = np.repeat(hash_ids, per_hash)[:n_tokens]
            out.append(
                SimRequest(
                    f"trace-{lineno - 1}",
                    tuple(chain_keys(ns, tokens)),
                    n_tokens,
                    max(1, round(output_length * scale)),
                    ns,
                )
            )
    if not out:
        raise InputError(f"{path}: no requests (after skipping {skip})")
    return out


def requests_from_serving(requests: Sequence[Request], namespace: Namespace) -> list[SimRequest]:
    """Key real requests as :class:`~llmsys.tiermem.serving.TieredKVConnector` keys them."""
    out = []
    for req in requests:
        keys = tuple(PrefixHasher(namespace).extend(req.prompt_ids))
        out.append(
            SimRequest(req.request_id, keys, len(req.prompt_ids), req.max_new_tokens, namespace)
        )
    return out


def footprint_bytes(requests: Sequence[SimRequest]) -> int:
    """Distinct full prompt blocks of ``requests`` x block bytes (the serving comparison's
    footprint ``F``)."""
    if not requests:
        return 0
    distinct = {key for req in requests for key in req.keys}
    return len(distinct) * requests[0].namespace.block_bytes
