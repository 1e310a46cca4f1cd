"""Per-process-tree memory and resource readings from /proc, psutil and Prometheus.

Protocol: :class:`ProcessTree` follows one root PID and its descendants.
:meth:`~ProcessTree.sample_fast` (cheap: ``statm``, ``stat``, ``fd/``; run at 1 Hz) returns
RSS, process count, threads, file descriptors and cumulative CPU seconds summed over the
tree; :meth:`~ProcessTree.sample_detail` (dearer: ``smaps_rollup`` walks every mapping; run
at a slower rate) returns PSS, anonymous and swap figures from ``/proc/PID/smaps_rollup``
and ``/proc/PID/status``. The descendant list is re-read every ``tree_refresh_s`` because
``children(recursive=True)`` scans all of /proc. Both raise :class:`psutil.NoSuchProcess`
when the root is gone (or its PID was reused by another process); a descendant that exits
mid-sample is skipped. :func:`scrape_prometheus` reads a ``/metrics`` endpoint into
``{sample name: value summed over label sets}``.

The parsers :func:`parse_smaps_rollup` and :func:`parse_status` are pure (text in, bytes out).
"""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "DETAIL_FIELDS",
    "FAST_FIELDS",
    "ProcessTree",
    "parse_smaps_rollup",
    "parse_status",
    "scrape_prometheus",
]

FAST_FIELDS = ("rss_bytes", "tree_processes", "threads", "fds", "cpu_s")
"""Keys of :meth:`ProcessTree.sample_fast`."""
_SMAPS_KEYS = {
    "Pss": "pss_bytes",
    "Pss_Anon": "pss_anon_bytes",
    "SwapPss": "swap_pss_bytes",
    "Anonymous": "anon_bytes",
    "Swap": "swap_bytes",
}
_STATUS_KEYS = {
    "RssAnon": "rss_anon_bytes",
    "RssFile": "rss_file_bytes",
    "RssShmem": "rss_shmem_bytes",
    "VmSwap": "vm_swap_bytes",
}
DETAIL_FIELDS = tuple(_SMAPS_KEYS.values()) + tuple(_STATUS_KEYS.values())
"""Keys of :meth:`ProcessTree.sample_detail`."""


def _parse_kb_lines(text: str, keys: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in keys:
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[keys[name]] = int(parts[0]) * 1024
    return out


def parse_smaps_rollup(text: str) -> dict[str, int]:
    """Return PSS, PSS of anonymous pages, swap PSS, anonymous and swap, in bytes.

    Keys present in the text only (older kernels lack ``Pss_Anon``).
    """
    return _parse_kb_lines(text, _SMAPS_KEYS)


def parse_status(text: str) -> dict[str, int]:
    """Return RssAnon, RssFile, RssShmem and VmSwap from ``/proc/PID/status``, in bytes."""
    return _parse_kb_lines(text, _STATUS_KEYS)


class ProcessTree:
    """A root process and its descendants, read as one unit.

    Args:
        pid: the root.
        tree_refresh_s: how often to re-scan for descendants, seconds.

    Raises:
        psutil.NoSuchProcess: ``pid`` does not exist.
    """

    def __init__(self, pid: int, tree_refresh_s: float = 5.0) -> None:
        self.pid = pid
        self.root = psutil.Process(pid)
        self._refresh_s = tree_refresh_s
        self._members: list[psutil.Process] = [self.root]
        self._refreshed_at = float("-inf")

    def _tree(self) -> list[psutil.Process]:
        if not self.root.is_running():  # compares create_time too: catches PID reuse
            raise psutil.NoSuchProcess(self.pid)
        now = time.monotonic()
        if now - self._refreshed_at >= self._refresh_s:
            known = {p.pid: p for p in self._members}
            fresh = [self.root]
            for child in self.root.children(recursive=True):
                # Keep the old object: psutil caches per-object state (e.g. CPU times base).
                fresh.append(known.get(child.pid, child))
            self._members = fresh
            self._refreshed_at = now
        return self._members

    def member_pids(self) -> list[int]:
        """PIDs of the root and the descendants found at the last refresh."""
        return [p.pid for p in self._members]

    def sample_fast(self) -> dict[str, float]:
        """RSS, process count, threads, fds and CPU seconds of the tree (see module doc)."""
        rss = threads = fds = 0
        cpu = 0.0
        alive = 0
        for proc in self._tree():
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    threads += proc.num_threads()
                    times = proc.cpu_times()
                    fds += proc.num_fds()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                if proc is self.root:
                    raise
                continue
            except psutil.AccessDenied:
                continue
            cpu += times.user + times.system
            alive += 1
        return {
            "rss_bytes": rss,
            "tree_processes": alive,
            "threads": threads,
            "fds": fds,
            "cpu_s": round(cpu, 3),
        }

    def sample_detail(self) -> dict[str, float]:
        """PSS, anonymous and swap figures of the tree, in bytes (see module doc)."""
        total: dict[str, float] = {}
        for proc in self._tree():
            try:
                with open(f"/proc/{proc.pid}/smaps_rollup") as fh:
                    smaps = parse_smaps_rollup(fh.read())
                with open(f"/proc/{proc.pid}/status") as fh:
                    status = parse_status(fh.read())
            except (FileNotFoundError, ProcessLookupError):
                if proc is self.root:
                    raise psutil.NoSuchProcess(proc.pid) from None
                continue
            except PermissionError:
                continue
            for key, value in (smaps | status).items():
                total[key] = total.get(key, 0) + value
        return total


def scrape_prometheus(url: str, timeout_s: float) -> dict[str, float]:
    """GET a Prometheus text endpoint; return ``{sample name: value summed over labels}``.

    Raises:
        OSError: the endpoint did not answer (``urllib.error.URLError`` is an OSError).
        ValueError: the body is not Prometheus text.
    """
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        body = resp.read().decode("utf-8", errors="replace")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
    return out


def first_present(values: dict[str, Any], names: tuple[str, ...]) -> float | None:
    """Return the value of the first of ``names`` present in ``values``, else None."""
    for name in names:
        if name in values:
            return float(values[name])
    return None
