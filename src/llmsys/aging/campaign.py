"""Campaign runner: co-located deployments under identical stress, supervised and durable.

Protocol: :func:`run_campaign` creates a campaign directory
(:class:`~llmsys.aging.campaign_store.CampaignStore`) from a
:class:`~llmsys.aging.campaign_config.CampaignConfig` and runs segment 0;
:func:`resume_campaign` opens the same directory and runs one more segment with the stress
time that is left. A segment:

1. brings every deployment up - on resume, a server the killed runner left alive (same PID
   and start time, answering its health URL) is *adopted* so its memory keeps ageing
   without a reset; anything else is started fresh (``deployment_up`` event, ``how``);
2. starts a :class:`~llmsys.aging.monitor.Monitor` over all of them into the segment
   folder (fsync'ed every sampling interval) and a supervisor thread that, once per
   interval, records a deployment whose process is gone as a ``crash`` event and, if
   ``restart_on_crash`` and under ``max_restarts``, restarts it (``deployment_up``,
   ``how = "restarted"``);
3. samples ``baseline_s``, then runs :func:`~llmsys.aging.loadgen.run_load` against every
   deployment at once with the same :class:`~llmsys.aging.campaign_config.StressConfig`
   for the remaining stress time (``stress_start``), then ``segment_end`` with the stress
   seconds done, and ``complete`` once the configured duration is reached;
4. stops the monitor and the deployments.

A runner killed with -9 leaves its deployments running (they have their own sessions)
and loses at most the sampling interval in flight; the stress seconds it did are counted
from its last rows. Campaign time is the stress time, not the wall time between segments.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil

from llmsys.aging.campaign_config import CampaignConfig, CampaignError
from llmsys.aging.campaign_store import CampaignStore
from llmsys.aging.deployments import DeploymentKind, DeploymentProcess, DeploymentSpec
from llmsys.aging.loadgen import LoadProgress, run_load
from llmsys.aging.monitor import Monitor, MonitorTarget
from llmsys.aging.probe_errors import DeploymentError

__all__ = ["CampaignProgress", "SegmentResult", "resume_campaign", "run_campaign", "stress_done_s"]

_LOG = logging.getLogger(__name__)
CampaignProgress = Callable[[float, float], None]
"""Called about once a second with (stress seconds done, stress seconds configured)."""


@dataclass(frozen=True, slots=True)
class SegmentResult:
    """What one ``run`` or ``resume`` did."""

    root: Path
    """The campaign directory."""
    segment: int
    """Index of the segment this call ran."""
    stress_done_s: float
    """Stress seconds done over all segments after this one."""
    complete: bool
    """The configured duration is reached."""
    crashes: int
    """Deployment crashes recorded in this segment."""
    adopted: tuple[str, ...]
    """Deployments adopted alive from an earlier runner (resume only)."""


class _Member:
    """One deployment of a segment: a process llmsys started, or one it adopted."""

    def __init__(self, spec: DeploymentSpec, log_path: Path) -> None:
        self.spec = spec
        self.log_path = log_path
        self.proc: DeploymentProcess | None = None
        self.adopted_pid: int | None = None
        self.adopted_url: str | None = None
        self.progress = LoadProgress()

    @property
    def url(self) -> str:
        if self.adopted_url is not None:
            return self.adopted_url
        assert self.proc is not None
        return self.proc.url

    @property
    def metrics_url(self) -> str | None:
        return DeploymentProcess(replace(self.spec, port=_port(self.url))).metrics_url

    def current_pid(self) -> int | None:
        if self.adopted_pid is not None:
            return self.adopted_pid if _alive(self.adopted_pid) else None
        return self.proc.current_pid() if self.proc is not None else None

    def start(self, port: int) -> None:
        spec = self.spec if self.spec.port or not port else replace(self.spec, port=port)
        self.proc = DeploymentProcess(spec, self.log_path)
        self.proc.start()
        self.proc.wait_ready()

    def restart(self) -> None:
        if self.adopted_pid is not None:
            port = _port(self.url)
            _terminate_group(self.adopted_pid)
            self.adopted_pid = self.adopted_url = None
            self.start(port)
        else:
            assert self.proc is not None
            self.proc.restart()

    def stop(self) -> None:
        if self.adopted_pid is not None:
            _terminate_group(self.adopted_pid)
        elif self.proc is not None:
            self.proc.stop()


def _port(url: str) -> int:
    """The port of ``http://host:port``; 0 (pick a free one) when the URL names none."""
    port = urllib.parse.urlsplit(url).port
    return port if port is not None else 0


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _terminate_group(pid: int, grace_s: float = 5.0) -> None:
    """SIGTERM then SIGKILL the process group a deployment was started in."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
        psutil.Process(pid).wait(grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _pid_record(pid: int | None) -> dict[str, Any]:
    if pid is None:
        return {"pid": None, "create_time": None}
    try:
        return {"pid": pid, "create_time": psutil.Process(pid).create_time()}
    except psutil.NoSuchProcess:
        return {"pid": pid, "create_time": None}


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def stress_done_s(store: CampaignStore) -> float:
    """Stress seconds done over every segment, from events and, after a kill, last rows."""
    done = 0.0
    starts: dict[int, float] = {}
    ended: dict[int, float] = {}
    for ev in store.events():
        if ev["event"] == "stress_start":
            starts[ev["segment"]] = ev["wall_time_s"]
        elif ev["event"] == "segment_end":
            ended[ev["segment"]] = ev["stress_s"]
    for segment, start in starts.items():
        if segment in ended:
            done += ended[segment]
        else:
            last = store.last_row_wall_s(segment)
            done += max(0.0, (last or start) - start)
    return done


def run_campaign(
    config: CampaignConfig,
    out_dir: Path,
    progress: CampaignProgress | None = None,
    stop: threading.Event | None = None,
) -> SegmentResult:
    """Create ``out_dir`` as a new campaign and run it (segment 0).

    ``stop`` (set from another thread or a signal handler) ends the segment early and
    cleanly; ``resume`` continues it. Raises :class:`CampaignError` if ``out_dir`` already
    holds a campaign, :class:`DeploymentError` if a deployment cannot start.
    """
    capacity = config.analysis.capacity_bytes or int(psutil.virtual_memory().total)
    store = CampaignStore.create(out_dir, config, capacity, time.time())
    return _run_segment(store, config, progress, stop or threading.Event())


def resume_campaign(
    out_dir: Path,
    progress: CampaignProgress | None = None,
    stop: threading.Event | None = None,
) -> SegmentResult:
    """Continue the campaign in ``out_dir`` with one more segment.

    Raises :class:`CampaignError` if ``out_dir`` is not a campaign or is already complete.
    """
    store = CampaignStore(out_dir)
    config = store.config()
    if any(ev["event"] == "complete" for ev in store.events()):
        raise CampaignError(f"{out_dir}: the campaign is complete; use 'report'")
    return _run_segment(store, config, progress, stop or threading.Event())


def _adoptable(store: CampaignStore) -> dict[str, dict[str, Any]]:
    """The last ``deployment_up`` record of every deployment."""
    last: dict[str, dict[str, Any]] = {}
    for ev in store.events():
        if ev["event"] == "deployment_up":
            last[ev["name"]] = ev
    return last


def _bring_up(store: CampaignStore, member: _Member, segment: int, prior: dict[str, Any]) -> str:
    """Adopt the deployment left alive by a killed runner, or start it. Returns how."""
    pid, url = prior.get("pid"), prior.get("url")
    # an external deployment is never adopted (adoption means llmsys may stop it later)
    if pid is not None and url is not None and member.spec.kind is not DeploymentKind.EXTERNAL:
        same = _pid_record(pid)["create_time"] == prior.get("create_time")
        if same and _alive(pid):
            health = DeploymentProcess(replace(member.spec, port=_port(url))).health_url
            if _healthy(health):
                member.adopted_pid, member.adopted_url = pid, url
                return "adopted"
            _terminate_group(pid)  # alive but not answering: replace it
    member.start(_port(url) if url else 0)
    return "started"


def _run_segment(
    store: CampaignStore,
    config: CampaignConfig,
    progress: CampaignProgress | None,
    stop: threading.Event,
) -> SegmentResult:
    done_before = stress_done_s(store)
    remaining = config.duration_s - done_before
    segment = store.new_segment()
    seg_dir = store.segment_dir(segment)
    store.append_event({"event": "segment_start", "segment": segment, "wall_time_s": time.time()})
    prior = _adoptable(store)
    members = [_Member(spec, seg_dir / "logs" / f"{spec.name}.log") for spec in config.deployments]
    adopted: list[str] = []
    crashes = [0]
    monitor: Monitor | None = None
    supervisor: threading.Thread | None = None
    stopping = threading.Event()
    stress_s = 0.0
    try:
        for member in members:
            how = _bring_up(store, member, segment, prior.get(member.spec.name, {}))
            if how == "adopted":
                adopted.append(member.spec.name)
            _record_up(store, member, segment, how)
        targets = [
            MonitorTarget(
                m.spec.name,
                m.current_pid,
                m.metrics_url,
                counters=m.progress.counts if m.metrics_url is None else None,
            )
            for m in members
        ]
        monitor = Monitor(targets, seg_dir, config.sampling.monitor_config())
        monitor.start()
        supervisor = threading.Thread(
            target=_supervise,
            args=(store, config, members, segment, stopping, crashes),
            name="campaign-supervisor",
            daemon=True,
        )
        supervisor.start()
        # a baseline only where a process is new: adopted ones are already in steady state
        baseline_s = config.baseline_s if len(adopted) < len(members) else 0.0
        if remaining > 0 and not stop.wait(baseline_s):
            stress_s = _stress(
                store, config, members, segment, remaining, done_before, progress, stop
            )
    finally:
        stopping.set()
        if supervisor is not None:
            supervisor.join()
        if monitor is not None:
            monitor.stop()
        for member in members:
            member.stop()
    total = done_before + stress_s
    store.append_event(
        {
            "event": "segment_end",
            "segment": segment,
            "stress_s": stress_s,
            "wall_time_s": time.time(),
        }
    )
    complete = total >= config.duration_s - config.sampling.interval_s
    if complete:
        store.append_event(
            {"event": "complete", "stress_done_s": total, "wall_time_s": time.time()}
        )
    return SegmentResult(store.root, segment, total, complete, crashes[0], tuple(adopted))


def _record_up(store: CampaignStore, member: _Member, segment: int, how: str) -> None:
    store.append_event(
        {
            "event": "deployment_up",
            "segment": segment,
            "name": member.spec.name,
            "how": how,
            "url": member.url,
            "wall_time_s": time.time(),
            **_pid_record(member.current_pid()),
        }
    )


def _stress(
    store: CampaignStore,
    config: CampaignConfig,
    members: list[_Member],
    segment: int,
    remaining_s: float,
    done_before_s: float,
    progress: CampaignProgress | None,
    stop: threading.Event,
) -> float:
    """Load every deployment at once for ``remaining_s``; return the stress seconds done."""
    start = time.time()
    store.append_event(
        {
            "event": "stress_start",
            "segment": segment,
            "wall_time_s": start,
            "duration_s": remaining_s,
        }
    )
    seg_dir = store.segment_dir(segment)
    loads = [
        threading.Thread(
            target=run_load,
            args=(
                config.stress.load_config(m.url, remaining_s, i + 1000 * segment),
                seg_dir / f"load-{m.spec.name}",
                stop,
                m.progress,
            ),
            name=f"load-{m.spec.name}",
            daemon=True,
        )
        for i, m in enumerate(members)
    ]
    for thread in loads:
        thread.start()
    while any(t.is_alive() for t in loads):
        for t in loads:
            t.join(timeout=1.0)
            if progress is not None:
                progress(
                    min(config.duration_s, done_before_s + time.time() - start), config.duration_s
                )
    return min(time.time() - start, remaining_s) if not stop.is_set() else time.time() - start


def _supervise(
    store: CampaignStore,
    config: CampaignConfig,
    members: list[_Member],
    segment: int,
    stopping: threading.Event,
    crashes: list[int],
) -> None:
    restarts = {m.spec.name: 0 for m in members}
    down: set[str] = set()
    while not stopping.wait(config.sampling.interval_s):
        for member in members:
            name = member.spec.name
            if name in down or member.current_pid() is not None or stopping.is_set():
                continue
            crashes[0] += 1
            store.append_event(
                {"event": "crash", "segment": segment, "name": name, "wall_time_s": time.time()}
            )
            _LOG.warning("deployment %s is down", name)
            if not config.restart_on_crash or restarts[name] >= config.max_restarts:
                down.add(name)
                store.append_event({"event": "left_down", "segment": segment, "name": name})
                continue
            restarts[name] += 1
            try:
                member.restart()
            except DeploymentError as exc:
                down.add(name)
                store.append_event(
                    {"event": "restart_failed", "segment": segment, "name": name, "error": str(exc)}
                )
                continue
            _record_up(store, member, segment, "restarted")
