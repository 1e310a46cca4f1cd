"""Deployment CSV loading with the validation the ``llmsys aging analyze`` contract names.

Protocol: one CSV file is one deployment, named by its file stem. Columns: ``t`` (seconds,
strictly increasing, present on every row), optional ``requests`` and ``tokens``
(cumulative counters) and one column per metric. An empty cell is a missing sample
(metrics are sampled at different rates). :func:`load_deployment_csv` returns a
:class:`Deployment` with NaN for missing cells, or raises :class:`CsvFormatError` naming the
file, the line (the header is line 1) and the problem: missing ``t``, a cell that is neither
a number nor empty, non-increasing time, fewer than ``MIN_SAMPLES`` samples in a metric.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from llmsys.aging.stats_errors import CsvFormatError
from llmsys.aging.trend import MIN_SAMPLES

FloatArray = npt.NDArray[np.float64]
TIME_COLUMN = "t"
COUNTER_COLUMNS = ("requests", "tokens")


@dataclass(frozen=True, slots=True)
class Deployment:
    """One deployment's samples; arrays are ``[n]`` aligned with ``t_s``."""

    name: str
    """Deployment name (the file stem)."""
    t_s: FloatArray
    """Sample times in seconds, strictly increasing."""
    metrics: dict[str, FloatArray] = field(default_factory=dict)
    """Metric name -> values, NaN where not sampled."""
    requests: FloatArray | None = None
    """Cumulative requests served, NaN where not sampled; None if the column is absent."""
    tokens: FloatArray | None = None
    """Cumulative tokens, NaN where not sampled; None if the column is absent."""

    def __post_init__(self) -> None:
        n = self.t_s.shape[0]
        for name, values in self.metrics.items():
            if values.shape != (n,):
                raise CsvFormatError(
                    f"{self.name}: metric {name!r} has shape {values.shape}, want ({n},)"
                )


def _parse_column(path: Path, name: str, cells: list[str]) -> FloatArray:
    raw = np.array([c.strip() for c in cells], dtype=object)
    empty = raw == ""
    try:
        values = np.where(empty, "nan", raw).astype(np.float64)
    except ValueError:
        values = np.empty(len(cells))
        for i, cell in enumerate(raw):
            try:
                values[i] = float(cell) if cell != "" else np.nan
            except ValueError:
                raise CsvFormatError(
                    f"{path}: line {i + 2}, column {name!r}: {cell!r} is neither a number nor empty"
                ) from None
    bad = ~empty & ~np.isfinite(values)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise CsvFormatError(
            f"{path}: line {i + 2}, column {name!r}: {raw[i]!r} is not a finite number"
        )
    return values


def load_deployment_csv(path: str | Path) -> Deployment:
    """Load and validate one deployment CSV; raise :class:`CsvFormatError` if malformed."""
    p = Path(path)
    try:
        with p.open(newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise CsvFormatError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise CsvFormatError(f"{p}: not a readable CSV file: {exc}") from None
    if not rows:
        raise CsvFormatError(f"{p}: line 1: the file is empty (need a header with column 't')")
    header = [h.strip() for h in rows[0]]
    if TIME_COLUMN not in header:
        raise CsvFormatError(f"{p}: line 1: missing column 't' (seconds) in header {header}")
    if len(set(header)) != len(header) or "" in header:
        raise CsvFormatError(f"{p}: line 1: duplicate or empty column names in {header}")
    body = rows[1:]
    for i, row in enumerate(body):
        if len(row) != len(header):
            raise CsvFormatError(
                f"{p}: line {i + 2}: {len(row)} cells, the header has {len(header)}"
            )
    columns = {name: _parse_column(p, name, [r[j] for r in body]) for j, name in enumerate(header)}
    t = columns.pop(TIME_COLUMN)
    if np.any(np.isnan(t)):
        raise CsvFormatError(f"{p}: line {int(np.argmax(np.isnan(t))) + 2}: column 't' is empty")
    steps = np.diff(t)
    if np.any(steps <= 0):
        i = int(np.argmax(steps <= 0))
        raise CsvFormatError(
            f"{p}: line {i + 3}: time does not increase (t={t[i + 1]!r} after t={t[i]!r})"
        )
    counters = {name: columns.pop(name, None) for name in COUNTER_COLUMNS}
    if not columns:
        raise CsvFormatError(f"{p}: line 1: no metric columns besides t, requests, tokens")
    for name, values in columns.items():
        count = int(np.count_nonzero(np.isfinite(values)))
        if count < MIN_SAMPLES:
            raise CsvFormatError(
                f"{p}: column {name!r}: {count} samples, need at least {MIN_SAMPLES}"
            )
    return Deployment(
        name=p.stem,
        t_s=t,
        metrics=columns,
        requests=counters["requests"],
        tokens=counters["tokens"],
    )
