"""Durable, thread-safe row writers for the monitor: one CSV and one JSONL kind.

Protocol: :meth:`write` appends one row and flushes it to the OS at once (a crash of the
monitor loses nothing already written); the file is fsync'ed at most every
``fsync_interval_s`` seconds (0: after every row) and on :meth:`close`. A CSV cell of None
is written empty - the "missing" of the statistics' CSV reader (``llmsys.aging.csvio``).
"""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from pathlib import Path
from typing import IO, Any

__all__ = ["CsvSink", "JsonlSink"]


class _Durable:
    def __init__(self, path: Path, fsync_interval_s: float) -> None:
        self.path = path
        self._fh: IO[str] = open(path, "w", newline="")  # noqa: SIM115 - closed in close()
        self._fsync_s = fsync_interval_s
        self._synced_at = time.monotonic()
        self._lock = threading.Lock()
        self.rows = 0
        """Rows written so far."""

    def _commit(self) -> None:
        self._fh.flush()
        self.rows += 1
        now = time.monotonic()
        if now - self._synced_at >= self._fsync_s:
            os.fsync(self._fh.fileno())
            self._synced_at = now

    def close(self) -> None:
        """Flush, fsync and close (idempotent)."""
        with self._lock:
            if not self._fh.closed:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()


class CsvSink(_Durable):
    """A CSV file with a fixed header; values missing from a row are written empty."""

    def __init__(self, path: Path, columns: list[str], fsync_interval_s: float) -> None:
        super().__init__(path, fsync_interval_s)
        self.columns = columns
        self._writer = csv.writer(self._fh)
        self._writer.writerow(columns)
        self._fh.flush()

    def write(self, values: dict[str, Any]) -> None:
        """Append one row."""
        cells = ["" if values.get(c) is None else values[c] for c in self.columns]
        with self._lock:
            self._writer.writerow(cells)
            self._commit()


class JsonlSink(_Durable):
    """A JSON-lines file of free-form records."""

    def write(self, record: dict[str, Any]) -> None:
        """Append one record."""
        line = json.dumps(record) + "\n"
        with self._lock:
            self._fh.write(line)
            self._commit()
