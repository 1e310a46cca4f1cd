"""Campaign configuration: one TOML file says everything a campaign does, and is recorded.

Protocol: :func:`load_campaign_config` reads a TOML file (or :meth:`CampaignConfig.from_dict`
a parsed one) into a frozen :class:`CampaignConfig`; every table is checked for unknown
keys, which are an error (never silently dropped). :meth:`CampaignConfig.to_dict` is the
inverse and is what a campaign directory records (``campaign.json``), so ``resume`` and
``report`` run on exactly the choices of ``run``. Layout::

    name = "demo"                 # label of the campaign
    duration_s = 100              # seconds of identical stress (all deployments at once)
    baseline_s = 3                # sampling before the stress starts
    control = "control"           # the deployment every other one is set against
    restart_on_crash = true       # supervision: restart a crashed deployment
    max_restarts = 3              # per deployment and run segment

    [sampling]                    # MonitorConfig fields
    interval_s = 0.5
    [stress]                      # LoadConfig fields except url and duration
    rate_rps = 8
    [analysis]                    # metric family and statistics
    metrics = ["rss_bytes", "anon_bytes"]
    alpha = 0.05
    correction = "bh"
    [[deployments]]               # DeploymentSpec: name, kind, config (the kind's options)
    name = "leak"
    kind = "injector"
    config = { kind = "per-request", leak_bytes = 262144 }

Errors::

    llmsys.core.errors.ConfigError (ValueError)
    └── CampaignConfigError   a campaign option is unknown, missing or out of range
    llmsys.core.errors.InputError (ValueError)
    └── CampaignError         a campaign directory is missing, foreign, complete or unusable
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from llmsys.aging.deployments import DeploymentKind, DeploymentSpec
from llmsys.aging.loadgen import ArrivalProcess, Endpoint, LoadConfig
from llmsys.aging.monitor import FAST_COLUMNS, MonitorConfig
from llmsys.aging.multiple_testing import Correction
from llmsys.aging.options import TrendMethod
from llmsys.aging.procfs import DETAIL_FIELDS
from llmsys.core.errors import ConfigError, InputError

__all__ = [
    "AnalysisSettings",
    "CampaignConfig",
    "CampaignConfigError",
    "CampaignError",
    "SamplingConfig",
    "StressConfig",
    "load_campaign_config",
]

METRIC_COLUMNS = (*FAST_COLUMNS, *DETAIL_FIELDS, "gpu_bytes")
"""Metric names a campaign may test (columns the monitor writes)."""


class CampaignConfigError(ConfigError):
    """A campaign option is unknown, missing or out of range (the message names it)."""


class CampaignError(InputError):
    """A campaign directory is missing, not a campaign, already complete, or unreadable."""


def _check_keys(table: str, values: dict[str, Any], cls: Any, extra: tuple[str, ...] = ()) -> None:
    known = {f.name for f in fields(cls)} | set(extra)
    unknown = sorted(set(values) - known)
    if unknown:
        raise CampaignConfigError(f"[{table}]: unknown key(s) {unknown}; known: {sorted(known)}")


@dataclass(frozen=True, slots=True)
class SamplingConfig:
    """How often the monitor samples (the :class:`MonitorConfig` of every run segment)."""

    interval_s: float = 1.0
    """Tick period of RSS, threads, fds, CPU and scrapes, seconds; also the fsync period,
    so a ``kill -9`` of the runner loses at most this interval."""
    detail_interval_s: float = 10.0
    """Period of PSS/anon/swap reads; a whole multiple of ``interval_s``."""
    tree_refresh_s: float = 5.0
    """How often child processes are re-discovered, seconds."""

    def __post_init__(self) -> None:
        try:
            self.monitor_config()
        except ConfigError as exc:
            raise CampaignConfigError(f"[sampling]: {exc}") from exc

    def monitor_config(self) -> MonitorConfig:
        """The monitor's configuration: fsync'ed every interval."""
        return MonitorConfig(
            interval_s=self.interval_s,
            detail_interval_s=self.detail_interval_s,
            scrape_timeout_s=min(0.5, self.interval_s),
            tree_refresh_s=self.tree_refresh_s,
            fsync_interval_s=self.interval_s,
        )


@dataclass(frozen=True, slots=True)
class StressConfig:
    """The load every deployment gets, identically (a :class:`LoadConfig` without url)."""

    arrival: ArrivalProcess = ArrivalProcess.POISSON
    """Open-loop ``poisson``/``gamma`` or closed-loop ``closed``."""
    rate_rps: float = 1.0
    """Mean open-loop arrival rate per deployment, requests per second."""
    gamma_shape: float = 1.0
    """Shape of gamma gaps."""
    concurrency: int = 1
    """Closed-loop workers per deployment."""
    max_in_flight: int = 64
    """Open-loop bound on running requests per deployment."""
    seed: int = 0
    """Seed of gaps and lengths; deployment i of segment k uses ``seed + i + 1000 k``."""
    endpoint: Endpoint = Endpoint.COMPLETIONS
    """``completions`` or ``chat``."""
    stream: bool = True
    """Ask for SSE streaming."""
    prompt_words_median: float = 32.0
    """Median prompt length, words."""
    prompt_words_sigma: float = 1.0
    """Log-normal sigma of prompt length."""
    prompt_words_max: int = 1024
    """Clip of prompt length, words."""
    output_tokens_median: float = 16.0
    """Median ``max_tokens``."""
    output_tokens_sigma: float = 0.8
    """Log-normal sigma of ``max_tokens``."""
    output_tokens_max: int = 256
    """Clip of ``max_tokens``."""
    timeout_s: float = 120.0
    """Socket timeout of one request, seconds."""

    def __post_init__(self) -> None:
        try:
            self.load_config("http://127.0.0.1:1", 1.0, 0)
        except ConfigError as exc:
            raise CampaignConfigError(f"[stress]: {exc}") from exc

    def load_config(self, url: str, duration_s: float, seed_offset: int) -> LoadConfig:
        """The :class:`LoadConfig` of one deployment for one run segment."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["seed"] = self.seed + seed_offset
        return LoadConfig(url=url, duration_s=duration_s, **values)


@dataclass(frozen=True, slots=True)
class AnalysisSettings:
    """The family of metrics tested and the statistics' choices."""

    metrics: tuple[str, ...] = ("rss_bytes", "anon_bytes")
    """Monitor columns tested for every deployment; the family is every (deployment, metric)."""
    alpha: float = 0.05
    """Family-level significance level, in (0, 1)."""
    correction: Correction = Correction.BH
    """Multiple-testing correction over the family."""
    method: TrendMethod = TrendMethod.SIEVE_BOOTSTRAP
    """Trend significance method."""
    capacity_bytes: int | None = None
    """Capacity for time to exhaustion of ``_bytes`` metrics; None: the host's total memory,
    resolved and recorded when the campaign directory is created."""
    seed: int = 0
    """Seed of the bootstrap."""
    min_slope_bytes_per_h: float = 0.0
    """Practical significance: a significant trend of a ``_bytes`` metric slower than this
    is reported ``negligible``, not aging (0: every significant trend counts). Recorded
    with the verdicts; the raw significance stays in the report."""

    def __post_init__(self) -> None:
        if not self.min_slope_bytes_per_h >= 0.0:
            raise CampaignConfigError("[analysis]: min_slope_bytes_per_h must be >= 0")
        if not self.metrics:
            raise CampaignConfigError("[analysis]: metrics must name at least one metric")
        bad = [m for m in self.metrics if m not in METRIC_COLUMNS]
        if bad:
            raise CampaignConfigError(f"[analysis]: unknown metric(s) {bad}; use {METRIC_COLUMNS}")
        if len(set(self.metrics)) != len(self.metrics):
            raise CampaignConfigError("[analysis]: metrics are listed twice")
        if not 0.0 < self.alpha < 1.0:
            raise CampaignConfigError(f"[analysis]: alpha must be in (0, 1), not {self.alpha}")
        if self.capacity_bytes is not None and self.capacity_bytes <= 0:
            raise CampaignConfigError("[analysis]: capacity_bytes must be > 0")


@dataclass(frozen=True, slots=True)
class CampaignConfig:
    """A whole campaign. Raises :class:`CampaignConfigError` when inconsistent."""

    name: str
    """Label of the campaign."""
    deployments: tuple[DeploymentSpec, ...]
    """Co-located deployments, all under the same stress (at least two)."""
    control: str
    """Name of the control deployment (zero-rate or reference) the others are set against."""
    duration_s: float
    """Seconds of stress, summed over run segments (a resume runs what is left)."""
    baseline_s: float = 2.0
    """Seconds sampled before the stress starts in a run segment that started a process
    (not when every deployment was adopted alive on resume), >= 0."""
    restart_on_crash: bool = True
    """Supervision: restart a deployment that exits (the crash is recorded either way)."""
    max_restarts: int = 3
    """Restarts per deployment and run segment before it is left down, >= 0."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Monitor rates."""
    stress: StressConfig = field(default_factory=StressConfig)
    """Identical load of every deployment."""
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    """Metric family and statistics."""

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise CampaignConfigError(f"name {self.name!r} must be [A-Za-z0-9_.-]+")
        names = [d.name for d in self.deployments]
        if len(names) < 2 or len(set(names)) != len(names):
            raise CampaignConfigError(f"need >= 2 deployments with unique names, got {names}")
        if self.control not in names:
            raise CampaignConfigError(f"control {self.control!r} is not a deployment ({names})")
        if "host" in names:
            raise CampaignConfigError("'host' is reserved for the host file")
        if not self.duration_s > 0 or self.baseline_s < 0 or self.max_restarts < 0:
            raise CampaignConfigError("duration_s must be > 0, baseline_s and max_restarts >= 0")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CampaignConfig:
        """Build from parsed TOML/JSON; unknown keys in any table are an error."""
        _check_keys("campaign", values, cls)
        top = dict(values)
        try:
            top["deployments"] = tuple(_deployment(d) for d in top.get("deployments", ()))
            sampling = dict(top.get("sampling", {}))
            _check_keys("sampling", sampling, SamplingConfig)
            top["sampling"] = SamplingConfig(**sampling)
            stress = dict(top.get("stress", {}))
            _check_keys("stress", stress, StressConfig)
            if "arrival" in stress:
                stress["arrival"] = ArrivalProcess(stress["arrival"])
            if "endpoint" in stress:
                stress["endpoint"] = Endpoint(stress["endpoint"])
            top["stress"] = StressConfig(**stress)
            analysis = dict(top.get("analysis", {}))
            _check_keys("analysis", analysis, AnalysisSettings)
            if "metrics" in analysis:
                analysis["metrics"] = tuple(analysis["metrics"])
            if "correction" in analysis:
                analysis["correction"] = Correction(analysis["correction"])
            if "method" in analysis:
                analysis["method"] = TrendMethod(analysis["method"])
            top["analysis"] = AnalysisSettings(**analysis)
            for key in ("name", "control", "duration_s"):
                if key not in top:
                    raise CampaignConfigError(f"[campaign]: missing required key {key!r}")
            return cls(**top)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, CampaignConfigError):
                raise
            raise CampaignConfigError(f"invalid campaign config: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """Plain values (enums as their names), the inverse of :meth:`from_dict`."""
        return {
            "name": self.name,
            "control": self.control,
            "duration_s": self.duration_s,
            "baseline_s": self.baseline_s,
            "restart_on_crash": self.restart_on_crash,
            "max_restarts": self.max_restarts,
            "sampling": _plain(self.sampling),
            "stress": _plain(self.stress),
            "analysis": _plain(self.analysis),
            "deployments": [
                {k: v for k, v in _plain(d).items() if v is not None} for d in self.deployments
            ],
        }


def _plain(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if hasattr(value, "value") and not isinstance(value, (int, float)):
            value = value.value
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def _deployment(values: Any) -> DeploymentSpec:
    if not isinstance(values, dict):
        raise CampaignConfigError(f"[[deployments]]: each entry must be a table, not {values!r}")
    _check_keys("deployments", values, DeploymentSpec)
    spec = dict(values)
    if "kind" not in spec or "name" not in spec:
        raise CampaignConfigError("[[deployments]]: 'name' and 'kind' are required")
    try:
        spec["kind"] = DeploymentKind(spec["kind"])
    except ValueError:
        kinds = [k.value for k in DeploymentKind]
        raise CampaignConfigError(
            f"unknown deployment kind {spec['kind']!r}; use {kinds}"
        ) from None
    dep = DeploymentSpec(**spec)
    _check_server_config(dep)
    return dep


def _check_server_config(dep: DeploymentSpec) -> None:
    """Validate a deployment's own options now, not when its process starts."""
    if dep.kind is DeploymentKind.INJECTOR:
        from llmsys.aging.injectors import InjectorConfig

        InjectorConfig.from_dict(dep.config)
    elif dep.kind is DeploymentKind.LLMSYS:
        from llmsys.aging.openai_server import ServerConfig

        ServerConfig.from_dict(dep.config)
    elif dep.kind is DeploymentKind.LLAMA_CPP:
        from llmsys.aging.llama_server import LlamaServerConfig

        LlamaServerConfig.from_dict(dep.config)


def load_campaign_config(path: Path) -> CampaignConfig:
    """Read a campaign TOML file. Raises :class:`CampaignConfigError` (naming the file)."""
    try:
        values = tomllib.loads(path.read_text())
    except OSError as exc:
        raise CampaignConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CampaignConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return CampaignConfig.from_dict(values)
    except ConfigError as exc:
        raise CampaignConfigError(f"{path}: {exc}") from exc
