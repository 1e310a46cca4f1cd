"""Durable campaign storage: an append-only directory that survives ``kill -9``.

Protocol: a :class:`CampaignStore` owns one campaign directory::

    DIR/campaign.json          config record + resolved capacity; written once, atomically
    DIR/events.jsonl           campaign events, fsync'ed after every record (append-only)
    DIR/segments/NNN/          one run segment (``run``, then one per ``resume``):
        <deployment>.csv       the monitor's rows, flushed per row, fsync'ed per interval
        host.csv, samples.jsonl, events.jsonl   (monitor, same rule)
        load-<deployment>/     the load generator's requests.jsonl and client.csv
        logs/<deployment>.log  the server's stdout and stderr
    DIR/merged/<deployment>.csv   derived by :meth:`merge` (rewritable, never a source)

Nothing under ``segments/`` is rewritten once written; a resume opens a new segment. A
runner killed with -9 leaves every row it wrote in the OS (rows are flushed as written and
fsync'ed once per sampling interval), so at most the interval in flight is lost; a torn last
line is ignored by :meth:`read_segment_rows`. :meth:`merge` joins the segments of one
deployment on one campaign clock (seconds since the campaign was created, from each
segment's monitor start in wall time), keeps time strictly increasing, and makes the
cumulative ``requests``/``tokens`` counters continuous across server restarts (a counter
that falls restarted from zero: the last value before is added from then on).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from llmsys.aging.campaign_config import CampaignConfig, CampaignError

__all__ = ["FORMAT", "CampaignStore"]

FORMAT = "llmsys-aging-campaign/1"
"""Value of ``format`` in ``campaign.json``."""
_COUNTERS = ("requests", "tokens")


class CampaignStore:
    """One campaign directory; see the module docstring for the layout."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # ----------------------------------------------------------------- creation / opening
    @classmethod
    def create(
        cls, root: Path, config: CampaignConfig, capacity_bytes: int, created_wall_s: float
    ) -> CampaignStore:
        """Create a new campaign directory. Raises :class:`CampaignError` if one exists."""
        if (root / "campaign.json").exists():
            raise CampaignError(f"{root} already holds a campaign: use 'resume' or 'report'")
        root.mkdir(parents=True, exist_ok=True)
        record = {
            "format": FORMAT,
            "config": config.to_dict(),
            "capacity_bytes": capacity_bytes,
            "created_wall_s": created_wall_s,
        }
        tmp = root / "campaign.json.tmp"
        with tmp.open("w") as fh:
            json.dump(record, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, root / "campaign.json")
        _fsync_dir(root)
        return cls(root)

    def record(self) -> dict[str, Any]:
        """The ``campaign.json`` record. Raises :class:`CampaignError` if absent or foreign."""
        path = self.root / "campaign.json"
        try:
            record: dict[str, Any] = json.loads(path.read_text())
        except OSError:
            raise CampaignError(
                f"{self.root} is not a campaign directory (no campaign.json)"
            ) from None
        except ValueError as exc:
            raise CampaignError(f"{path} is not valid JSON: {exc}") from None
        if record.get("format") != FORMAT:
            raise CampaignError(f"{path}: format {record.get('format')!r}, want {FORMAT!r}")
        return record

    def config(self) -> CampaignConfig:
        """The recorded configuration."""
        return CampaignConfig.from_dict(self.record()["config"])

    # ----------------------------------------------------------------- events
    def append_event(self, event: dict[str, Any]) -> None:
        """Append one event and fsync it before returning."""
        with (self.root / "events.jsonl").open("a") as fh:
            fh.write(json.dumps(event) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def events(self) -> list[dict[str, Any]]:
        """Every complete event record, in order (a torn last line is skipped)."""
        path = self.root / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in _complete_lines(path.read_text())]

    # ----------------------------------------------------------------- segments
    def segments(self) -> list[int]:
        """Indices of the segment folders, ascending."""
        base = self.root / "segments"
        if not base.is_dir():
            return []
        return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())

    def segment_dir(self, segment: int) -> Path:
        """Folder of one segment."""
        return self.root / "segments" / f"{segment:03d}"

    def new_segment(self) -> int:
        """Create the next segment's folder and return its index."""
        existing = self.segments()
        segment = existing[-1] + 1 if existing else 0
        self.segment_dir(segment).mkdir(parents=True)
        _fsync_dir(self.root / "segments")
        return segment

    def segment_t0_wall_s(self, segment: int) -> float | None:
        """Wall time of the segment's monitor tick 0, or None if it never started."""
        path = self.segment_dir(segment) / "events.jsonl"
        if not path.exists():
            return None
        for line in _complete_lines(path.read_text()):
            rec = json.loads(line)
            if rec.get("event") == "start":
                return float(rec["wall_time_s"]) - float(rec["t"])
        return None

    def read_segment_rows(self, segment: int, name: str) -> tuple[list[str], list[list[str]]]:
        """Header and complete rows of a deployment's CSV in one segment ([] if absent)."""
        path = self.segment_dir(segment) / f"{name}.csv"
        if not path.exists():
            return [], []
        lines = _complete_lines(path.read_text())
        rows = list(csv.reader(io.StringIO("\n".join(lines))))
        if not rows:
            return [], []
        header = rows[0]
        return header, [r for r in rows[1:] if len(r) == len(header)]

    def last_row_wall_s(self, segment: int) -> float | None:
        """Wall time of the latest row of any deployment in a segment, or None."""
        t0 = self.segment_t0_wall_s(segment)
        if t0 is None:
            return None
        latest: float | None = None
        for name in self.deployment_names():
            header, rows = self.read_segment_rows(segment, name)
            if rows:
                t = float(rows[-1][header.index("t")])
                latest = t if latest is None else max(latest, t)
        return None if latest is None else t0 + latest

    def rows_missing_before(self, segment: int, wall_s: float) -> dict[str, int]:
        """Per series (deployments and ``host``), ticks scheduled up to ``wall_s`` that have
        no complete row in ``segment`` - what a runner killed at ``wall_s`` lost."""
        t0 = self.segment_t0_wall_s(segment)
        if t0 is None:
            raise CampaignError(f"segment {segment} of {self.root} has no monitor start")
        interval = float(self.record()["config"]["sampling"]["interval_s"])
        expected = int((wall_s - t0) // interval) + 1
        return {
            name: max(0, expected - len(self.read_segment_rows(segment, name)[1]))
            for name in [*self.deployment_names(), "host"]
        }

    def deployment_names(self) -> list[str]:
        """Deployment names in config order."""
        return [d["name"] for d in self.record()["config"]["deployments"]]

    # ----------------------------------------------------------------- merge
    def merge(self, name: str) -> Path:
        """Write ``merged/<name>.csv`` on the campaign clock; return its path.

        Raises :class:`CampaignError` when no segment holds a row of ``name``.
        """
        created = float(self.record()["created_wall_s"])
        header: list[str] = []
        out_rows: list[list[str]] = []
        last_t = float("-inf")
        offset = dict.fromkeys(_COUNTERS, 0.0)
        prev_raw: dict[str, float | None] = dict.fromkeys(_COUNTERS, None)
        for segment in self.segments():
            t0 = self.segment_t0_wall_s(segment)
            seg_header, rows = self.read_segment_rows(segment, name)
            if t0 is None or not rows:
                continue
            if not header:
                header = seg_header
            elif seg_header != header:
                raise CampaignError(f"{name}: segment {segment} has other columns than segment 0")
            ti = header.index("t")
            cols = {c: header.index(c) for c in _COUNTERS if c in header}
            for row in rows:
                t = round(t0 - created + float(row[ti]), 6)
                if t <= last_t:
                    continue  # a wall clock stepped back: keep time strictly increasing
                last_t = t
                row = list(row)
                row[ti] = f"{t:.6f}"
                for c, j in cols.items():
                    if row[j] == "":
                        continue
                    raw = float(row[j])
                    before = prev_raw[c]
                    if before is not None and raw < before:
                        offset[c] += before  # the server restarted: its counter began at 0
                    prev_raw[c] = raw
                    row[j] = repr(raw + offset[c])
                out_rows.append(row)
        if not out_rows:
            raise CampaignError(f"{self.root}: no samples of deployment {name!r}")
        path = self.root / "merged" / f"{name}.csv"
        path.parent.mkdir(exist_ok=True)
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(out_rows)
        return path

    def to_campaign_s(self, wall_s: float) -> float:
        """Campaign-clock seconds of a wall time."""
        return wall_s - float(self.record()["created_wall_s"])


def _complete_lines(text: str) -> list[str]:
    """Lines ending in a newline; a last line cut by a crash is dropped."""
    lines = text.split("\n")
    return [line for line in lines[:-1] if line]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
