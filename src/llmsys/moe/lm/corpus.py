"""Pre-training text this machine already has, in three domains, as bytes.

Protocol
--------
:func:`build_corpus` gathers up to ``max_bytes_per_domain`` bytes per :class:`Domain`:

- ``PYTHON``: the Python standard library's ``.py`` files (``sysconfig`` stdlib path),
  sorted by path;
- ``MAN``: section-1 man pages under ``/usr/share/man/man1`` (gzip), troff requests and
  font escapes stripped, sorted by name;
- ``ARITHMETIC``: generated lines of ``a+b=c``, ``a-b=c`` and ``a*b=c`` in the exact
  format of the RL task's prompts (:mod:`llmsys.moe.lm.tasks`), from a seeded generator.

A domain whose files are absent (a minimal container without man pages) is left out and
reported in :attr:`Corpus.missing`; the corpus needs at least one domain. Windows for
training are drawn by :meth:`Corpus.sample` from a seeded ``numpy`` generator, so a given
machine's files and seed reproduce the same batches.
"""

from __future__ import annotations

import enum
import gzip
import re
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from llmsys.core.errors import InputError
from llmsys.moe.lm.tasks import arithmetic_text


class Domain(enum.Enum):
    """Source of a pre-training byte stream."""

    PYTHON = "python"
    """Python standard library source."""
    MAN = "man"
    """Man pages, section 1."""
    ARITHMETIC = "arithmetic"
    """Generated arithmetic lines."""


DEFAULT_MIX = {Domain.PYTHON: 0.35, Domain.MAN: 0.25, Domain.ARITHMETIC: 0.40}
"""Share of training windows drawn from each domain."""

_TROFF_REQUEST = re.compile(rb"^[.'].*$", re.MULTILINE)
_TROFF_ESCAPE = re.compile(rb"\\f[BIRP]|\\f\(..|\\\(..|\\[-&e|^]")


def _python_bytes(limit: int) -> bytes:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = bytearray()
    for path in sorted(root.glob("*.py")):
        out += path.read_bytes()
        if len(out) >= limit:
            break
    return bytes(out[:limit])


def _man_bytes(limit: int, man_dir: Path) -> bytes:
    out = bytearray()
    for path in sorted(man_dir.glob("*.1*.gz")) if man_dir.is_dir() else []:
        try:
            raw = gzip.decompress(path.read_bytes())
        except (OSError, EOFError):
            continue
        text = _TROFF_ESCAPE.sub(b"", _TROFF_REQUEST.sub(b"", raw))
        out += re.sub(rb"\n{2,}", b"\n", text)
        if len(out) >= limit:
            break
    return bytes(out[:limit])


@dataclass(frozen=True, slots=True)
class Corpus:
    """Byte streams per domain and the mix to draw windows from."""

    streams: dict[Domain, npt.NDArray[np.uint8]] = field(repr=False)
    """Each domain's bytes."""
    mix: dict[Domain, float]
    """Normalised sampling share of each present domain."""
    missing: tuple[Domain, ...]
    """Domains requested but absent on this machine."""

    def sample(
        self, rng: np.random.Generator, batch: int, seq_tokens: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """``(windows [batch, seq_tokens], domain index per window)`` drawn at random."""
        domains = list(self.mix)
        probs = np.array([self.mix[d] for d in domains])
        which = rng.choice(len(domains), size=batch, p=probs)
        rows = np.empty((batch, seq_tokens), dtype=np.int64)
        for i, w in enumerate(which):
            stream = self.streams[domains[w]]
            start = int(rng.integers(0, len(stream) - seq_tokens))
            rows[i] = stream[start : start + seq_tokens]
        return rows, which.astype(np.int64)


def build_corpus(
    max_bytes_per_domain: int = 4 << 20,
    mix: dict[Domain, float] | None = None,
    seed: int = 0,
    man_dir: Path = Path("/usr/share/man/man1"),
) -> Corpus:
    """Gather the domains' bytes (see the module docstring).

    Raises:
        InputError: ``max_bytes_per_domain`` is too small, a mix share is negative, or no
            domain has any bytes.
    """
    if max_bytes_per_domain < 4096:
        raise InputError("max_bytes_per_domain must be >= 4096")
    want = dict(mix if mix is not None else DEFAULT_MIX)
    if any(v < 0 for v in want.values()) or not any(v > 0 for v in want.values()):
        raise InputError("corpus mix shares must be >= 0 with at least one > 0")
    streams: dict[Domain, npt.NDArray[np.uint8]] = {}
    missing: list[Domain] = []
    for domain, share in want.items():
        if share <= 0:
            continue
        if domain is Domain.PYTHON:
            data = _python_bytes(max_bytes_per_domain)
        elif domain is Domain.MAN:
            data = _man_bytes(max_bytes_per_domain, man_dir)
        else:
            data = arithmetic_text(np.random.default_rng(seed), max_bytes_per_domain)
        if len(data) < 4096:
            missing.append(domain)
            continue
        streams[domain] = np.frombuffer(data, dtype=np.uint8)
    if not streams:
        raise InputError("no pre-training text found on this machine")
    total = sum(want[d] for d in streams)
    return Corpus(streams, {d: want[d] / total for d in streams}, tuple(missing))
