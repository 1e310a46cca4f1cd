"""The aging monitor: parallel, durable, gap-honest sampling of serving deployments.

Protocol: a :class:`Monitor` gets :class:`MonitorTarget` s (a name, a callable giving the
live PID or None, and an optional Prometheus URL), an output folder and a
:class:`MonitorConfig`. :meth:`~Monitor.start` runs one sampling thread per target and one
for the host; :meth:`~Monitor.stop` joins them and closes the files. Ticks are scheduled on
the monotonic clock at ``t0 + k * interval_s``, and every tick of every target yields
exactly one row - a sample, or a missed tick - in two files:

- ``OUT/<target>.csv``, the statistics' format (``llmsys.aging.csvio``): ``t`` (seconds
  since the monitor started, monotonic, strictly increasing), the cumulative ``requests``
  and ``tokens`` scraped from the target's ``/metrics`` (llmsys, vLLM and SGLang names are
  known; else read from the target's ``counters`` callable), then one column per metric:
  :data:`FAST_COLUMNS` every tick (``cpu_fraction`` is CPU seconds per second over the last
  tick), :data:`~llmsys.aging.procfs.DETAIL_FIELDS` every ``detail_interval_s``,
  ``gpu_bytes`` when a GPU backend is given, ``prom_<name>`` per extra scraped sample. An
  empty cell is missing: not due at this tick, scrape failed, or the tick was missed.
  Nothing is interpolated or carried forward.
- ``OUT/samples.jsonl``: the same rows with ``target``, ``tick``, ``wall_time_s``
  (Unix time), ``mono_s`` (raw ``time.monotonic()``), ``pid``, cumulative ``cpu_s`` and
  ``missed`` with its ``reason``: ``late`` (the thread could not reach the tick in time;
  its ``t`` is the scheduled time), ``down`` (no live PID), ``vanished`` (the process exited
  mid-read). PID changes (restarts), start and stop go to ``OUT/events.jsonl``.

``OUT/host.csv`` holds system memory, GPU devices and the monitor's own RSS and CPU. Rows
are flushed as written and fsync'ed every ``fsync_interval_s``. The monitor's own counters
are in :attr:`Monitor.registry` (prometheus_client), served on ``metrics_port`` if set.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from llmsys.aging.gpu import GpuBackend
from llmsys.aging.probe_errors import ProbeConfigError
from llmsys.aging.procfs import DETAIL_FIELDS, ProcessTree, first_present, scrape_prometheus
from llmsys.aging.sinks import CsvSink, JsonlSink

__all__ = [
    "FAST_COLUMNS",
    "REQUEST_COUNTERS",
    "TOKEN_COUNTERS",
    "Monitor",
    "MonitorConfig",
    "MonitorTarget",
]

_LOG = logging.getLogger(__name__)
REQUEST_COUNTERS = (
    "llmsys_requests_total",
    "vllm:request_success_total",
    "sglang:num_requests_total",
)
"""Scraped sample names read as the cumulative ``requests`` column (first present wins)."""
TOKEN_COUNTERS = (
    "llmsys_generated_tokens_total",
    "vllm:generation_tokens_total",
    "sglang:generation_tokens_total",
)
"""Scraped sample names read as the cumulative ``tokens`` column (first present wins)."""
FAST_COLUMNS = ("rss_bytes", "tree_processes", "threads", "fds", "cpu_fraction")
"""Metric columns sampled every tick."""
HOST_COLUMNS = (
    "mem_available_bytes",
    "mem_used_bytes",
    "swap_used_bytes",
    "monitor_rss_bytes",
    "monitor_cpu_fraction",
)
"""Metric columns of ``host.csv`` (then ``gpu<i>_used_bytes`` per device)."""


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """Sampling choices, recorded with the run. Raises :class:`ProbeConfigError`."""

    interval_s: float = 1.0
    """Tick period of RSS, threads, fds, CPU, GPU and scrapes, seconds in [0.05, 3600]."""
    detail_interval_s: float = 10.0
    """Period of smaps_rollup/status reads; a whole multiple of ``interval_s``."""
    scrape_timeout_s: float = 0.5
    """Timeout of one ``/metrics`` scrape, seconds in (0, interval_s]."""
    tree_refresh_s: float = 5.0
    """How often descendants are re-discovered, seconds >= 0."""
    fsync_interval_s: float = 10.0
    """How often files are fsync'ed, seconds >= 0 (0: every row)."""
    extra_metrics: tuple[str, ...] = ()
    """Further scraped sample names to record as ``prom_<name>`` columns."""
    metrics_port: int | None = None
    """Serve the monitor's own metrics on this port (None: not served)."""

    def __post_init__(self) -> None:
        if not 0.05 <= self.interval_s <= 3600:
            raise ProbeConfigError(f"interval_s must be in [0.05, 3600], not {self.interval_s}")
        ratio = self.detail_interval_s / self.interval_s
        if ratio < 1 or abs(ratio - round(ratio)) > 1e-9:
            raise ProbeConfigError("detail_interval_s must be a whole multiple of interval_s")
        if not 0 < self.scrape_timeout_s <= self.interval_s:
            raise ProbeConfigError("scrape_timeout_s must be in (0, interval_s]")
        if self.tree_refresh_s < 0 or self.fsync_interval_s < 0:
            raise ProbeConfigError("tree_refresh_s and fsync_interval_s must be >= 0")

    @property
    def detail_every_ticks(self) -> int:
        """Ticks between detail reads."""
        return round(self.detail_interval_s / self.interval_s)


@dataclass(frozen=True, slots=True)
class MonitorTarget:
    """One thing to watch."""

    name: str
    """File-name-safe label (the CSV is ``<name>.csv``)."""
    pid_source: Callable[[], int | None]
    """Returns the live root PID now, or None while the target is down."""
    metrics_url: str | None = None
    """Prometheus endpoint to scrape each tick, or None."""
    counters: Callable[[], tuple[float, float]] | None = None
    """Cumulative (requests, tokens) read each tick where the scrape gives none - e.g.
    :meth:`~llmsys.aging.loadgen.LoadProgress.counts` for a server without ``/metrics``."""

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_" for c in self.name):
            raise ProbeConfigError(f"target name {self.name!r} must be [A-Za-z0-9_-]+")
        if self.name == "host":
            raise ProbeConfigError("'host' is reserved for the host file")

    @classmethod
    def for_pid(
        cls, pid: int, name: str | None = None, metrics_url: str | None = None
    ) -> MonitorTarget:
        """A target that follows one fixed PID (down for good once it exits)."""
        return cls(
            name or f"pid{pid}", lambda: pid if psutil.pid_exists(pid) else None, metrics_url
        )


class Monitor:
    """Samples targets in parallel into ``out_dir``; see the module docstring.

    Raises:
        ProbeConfigError: duplicate target names or no targets.
        OSError: ``out_dir`` cannot be written.
    """

    def __init__(
        self,
        targets: list[MonitorTarget],
        out_dir: Path,
        config: MonitorConfig | None = None,
        gpu: GpuBackend | None = None,
    ) -> None:
        names = [t.name for t in targets]
        if not targets or len(set(names)) != len(names):
            raise ProbeConfigError(f"targets need unique names, got {names}")
        self.targets = targets
        self.out_dir = out_dir
        self.config = config or MonitorConfig()
        self.gpu = gpu
        self.registry = CollectorRegistry()
        reg = self.registry
        self._samples = Counter("llmsys_monitor_samples", "Ticks sampled", ["target"], registry=reg)
        self._missed = Counter(
            "llmsys_monitor_missed", "Ticks without a sample", ["target", "reason"], registry=reg
        )
        self._scrape_failures = Counter(
            "llmsys_monitor_scrape_failures", "Failed scrapes", ["target"], registry=reg
        )
        self._self_rss = Gauge("llmsys_monitor_rss_bytes", "Monitor RSS", registry=reg)
        self._self_cpu = Gauge("llmsys_monitor_cpu_seconds", "Monitor CPU time", registry=reg)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._csv: dict[str, CsvSink] = {}
        self._samples_out: JsonlSink | None = None
        self._events: JsonlSink | None = None
        self._t0 = 0.0
        self._http: Any = None

    def csv_path(self, name: str) -> Path:
        """Path of a target's CSV (or ``host``)."""
        return self.out_dir / f"{name}.csv"

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Open the files and start the sampling threads."""
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        columns = ["t", "requests", "tokens", *FAST_COLUMNS, *DETAIL_FIELDS]
        columns += ["gpu_bytes"] if self.gpu is not None else []
        columns += [f"prom_{_safe(n)}" for n in cfg.extra_metrics]
        for target in self.targets:
            self._csv[target.name] = CsvSink(
                self.csv_path(target.name), columns, cfg.fsync_interval_s
            )
        host = ["t", *HOST_COLUMNS]
        host += [f"gpu{i}_used_bytes" for i in range(self.gpu.device_count if self.gpu else 0)]
        self._csv["host"] = CsvSink(self.csv_path("host"), host, cfg.fsync_interval_s)
        self._samples_out = JsonlSink(self.out_dir / "samples.jsonl", cfg.fsync_interval_s)
        self._events = JsonlSink(self.out_dir / "events.jsonl", 0.0)
        if cfg.metrics_port is not None:
            self._http = start_http_server(cfg.metrics_port, registry=self.registry)
        self._t0 = time.monotonic()
        self._event("start", None, config=_config_record(cfg), targets=names_of(self.targets))
        self._stop.clear()
        for target in self.targets:
            self._threads.append(
                threading.Thread(
                    target=self._run_target, args=(target,), name=f"monitor-{target.name}"
                )
            )
        self._threads.append(threading.Thread(target=self._run_host, name="monitor-host"))
        for thread in self._threads:
            thread.daemon = True
            thread.start()

    def stop(self) -> None:
        """Stop sampling, join the threads, close the files (idempotent)."""
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._threads = []
        if self._events is not None:
            self._event("stop", None)
        for sink in [*self._csv.values(), self._samples_out, self._events]:
            if sink is not None:
                sink.close()
        self._csv, self._samples_out, self._events = {}, None, None
        if isinstance(self._http, tuple):
            self._http[0].shutdown()
            self._http = None

    def run_for(self, duration_s: float) -> None:
        """Start, sample for ``duration_s`` seconds, stop."""
        self.start()
        try:
            self._stop.wait(duration_s)
        finally:
            self.stop()

    def __enter__(self) -> Monitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- scheduling
    def _ticks(self) -> Iterator[tuple[int, float | None]]:
        """Yield (tick, monotonic time of its sample) until stopped; None: a late tick.

        One clock reading decides both which ticks were overslept and the stamp of the
        current one, so ``t`` is strictly increasing: late ticks get k * interval, and the
        sampled tick's reading lies in [k * interval, (k + 1) * interval).
        """
        interval = self.config.interval_s
        k = 0
        while True:
            delay = self._t0 + k * interval - time.monotonic()
            if (delay > 0 and self._stop.wait(delay)) or self._stop.is_set():
                return
            mono = time.monotonic()
            reached = max(k, int((mono - self._t0) / interval))
            while k < reached:  # ticks the thread overslept
                yield k, None
                k += 1
            yield k, mono
            k += 1

    def _event(self, kind: str, target: str | None, **fields: Any) -> None:
        if self._events is not None:
            t = round(time.monotonic() - self._t0, 6)
            self._events.write(
                {"event": kind, "target": target, "t": t, "wall_time_s": time.time(), **fields}
            )

    def _emit(self, name: str, k: int, row: dict[str, Any], reason: str | None) -> None:
        """Write one tick's row to the CSV and the JSONL and count it."""
        self._csv[name].write(row)
        if self._samples_out is not None:
            self._samples_out.write(
                {"target": name, "tick": k, "missed": reason is not None, "reason": reason, **row}
            )
        if reason is None:
            self._samples.labels(name).inc()
        else:
            self._missed.labels(name, reason).inc()
            self._event("missed", name, tick=k, reason=reason, pid=row.get("pid"))

    def _stamp(self, k: int, mono: float | None) -> dict[str, Any]:
        if mono is None:  # a late tick: only the schedule is known, no reading is invented
            return {"t": round(k * self.config.interval_s, 6)}
        # rounding down keeps t inside its tick, so rows stay strictly increasing
        t = math.floor((mono - self._t0) * 1e6) / 1e6
        return {"t": t, "wall_time_s": time.time(), "mono_s": mono}

    # ----------------------------------------------------------------- samplers
    def _run_target(self, target: MonitorTarget) -> None:
        cfg = self.config
        tree: ProcessTree | None = None
        last_cpu: tuple[float, float] | None = None  # (mono_s, cpu_s) of the previous sample
        for k, mono in self._ticks():
            row = self._stamp(k, mono)
            if mono is None:
                self._emit(target.name, k, row, "late")
                continue
            pid = target.pid_source()
            row["pid"] = pid
            if pid is None:
                self._emit(target.name, k, row, "down")
                continue
            try:
                if tree is None or tree.pid != pid:
                    tree, last_cpu = ProcessTree(pid, cfg.tree_refresh_s), None
                    self._event("pid", target.name, pid=pid)
                row.update(tree.sample_fast())
                if k % cfg.detail_every_ticks == 0:
                    row.update(tree.sample_detail())
            except psutil.NoSuchProcess:
                tree = None
                self._emit(
                    target.name,
                    k,
                    {key: row[key] for key in ("t", "wall_time_s", "mono_s", "pid")},
                    "vanished",
                )
                continue
            if last_cpu is not None and row["mono_s"] > last_cpu[0]:
                row["cpu_fraction"] = round(
                    (row["cpu_s"] - last_cpu[1]) / (row["mono_s"] - last_cpu[0]), 4
                )
            last_cpu = (row["mono_s"], row["cpu_s"])
            if self.gpu is not None:
                snap = self.gpu.sample(row["t"])
                if snap is not None:
                    members = set(tree.member_pids())
                    row["gpu_bytes"] = sum(b for p, b in snap.processes.items() if p in members)
            if target.metrics_url:
                self._scrape(target, row)
            if target.counters is not None and row.get("requests") is None:
                row["requests"], row["tokens"] = target.counters()
            self._emit(target.name, k, row, None)

    def _scrape(self, target: MonitorTarget, row: dict[str, Any]) -> None:
        assert target.metrics_url is not None
        try:
            values = scrape_prometheus(target.metrics_url, self.config.scrape_timeout_s)
        except (OSError, ValueError) as exc:
            self._scrape_failures.labels(target.name).inc()
            _LOG.debug("scrape of %s failed: %s", target.metrics_url, exc)
            return
        row["requests"] = first_present(values, REQUEST_COUNTERS)
        row["tokens"] = first_present(values, TOKEN_COUNTERS)
        for name in self.config.extra_metrics:
            row[f"prom_{_safe(name)}"] = values.get(name)

    def _run_host(self) -> None:
        me = psutil.Process()
        last_cpu: tuple[float, float] | None = None
        for k, mono in self._ticks():
            row = self._stamp(k, mono)
            if mono is None:
                self._emit("host", k, row, "late")
                continue
            vm, sw = psutil.virtual_memory(), psutil.swap_memory()
            with me.oneshot():
                rss = me.memory_info().rss
                times = me.cpu_times()
            cpu = times.user + times.system
            self._self_rss.set(rss)
            self._self_cpu.set(cpu)
            row.update(
                mem_available_bytes=vm.available,
                mem_used_bytes=vm.used,
                mem_total_bytes=vm.total,
                swap_used_bytes=sw.used,
                monitor_rss_bytes=rss,
                monitor_cpu_s=round(cpu, 3),
            )
            if last_cpu is not None:
                row["monitor_cpu_fraction"] = round(
                    (cpu - last_cpu[1]) / (row["mono_s"] - last_cpu[0]), 4
                )
            last_cpu = (row["mono_s"], cpu)
            if self.gpu is not None:
                snap = self.gpu.sample(row["t"])
                for i, (used, total) in enumerate(snap.devices if snap else ()):
                    row[f"gpu{i}_used_bytes"], row[f"gpu{i}_total_bytes"] = used, total
            self._emit("host", k, row, None)


def names_of(targets: list[MonitorTarget]) -> list[str]:
    """Target names, in order."""
    return [t.name for t in targets]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def _config_record(cfg: MonitorConfig) -> dict[str, Any]:
    return {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}
