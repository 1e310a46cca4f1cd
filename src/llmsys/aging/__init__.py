"""llmsys.aging - software-aging campaigns for LLM serving.

Trend statistics (issue 11)
---------------------------
Pure functions over arrays with timestamps; no I/O except :func:`load_deployment_csv`.

Objects: a :class:`MetricSeries` (``t_s: [n]`` seconds, ``y: [n]`` values with NaN = not
sampled, optional cumulative ``requests``/``tokens``) is what flows in; a
:class:`MetricAnalysis` per series and a :class:`FamilyAnalysis` per declared family of
(deployment, metric) tests is what flows out.

Calls that move data, in pipeline order (:func:`analyze_family` runs them all):

1. :func:`load_deployment_csv` - one CSV -> :class:`Deployment` (validated; errors name the
   file, line and problem).
2. :func:`detect_changepoints` - warm-up end and leak onset (PELT, linear cost).
3. :func:`trend_test` - Mann-Kendall S with a :class:`TrendMethod`: ``SIEVE_BOOTSTRAP``
   (default: S on block means, null Var S from an AR sieve bootstrap, bias-corrected, on
   residuals chosen by :class:`Detrend`), ``HAMED_RAO``
   (bounded lags, positive floor) or ``ORIGINAL``; p as log10 p from the normal
   log-survival function (always finite); the Sen slope interval from order statistics
   with that Var S.
4. :func:`sen_slope` - exact Theil-Sen slope in O(n log n)-type time (slope selection by
   inversion counting, :func:`pairwise_slope_order_stats`), per real time unit.
5. :func:`classify_growth` / :func:`time_to_exhaustion` - linear, saturating or step; TTE for
   linear growth only.
6. :func:`work_slopes` - slopes per 1,000 requests and per million tokens.
7. :func:`adjust_log10_p` - BH, BY or Holm over the family (:class:`Correction`), in log10 p.

Everything configurable lives in :class:`TrendConfig` and :class:`AnalysisConfig` and is
recorded in the results. Same input and seed, same output.

Exceptions (statistics)::

    llmsys.core.errors.InputError (ValueError)
    └── SeriesError          an array is not a usable series (shape, NaN, < 10 samples, time order)
        └── CsvFormatError   a deployment CSV is malformed (names file, line and problem)
    llmsys.core.errors.ConfigError (ValueError)
    └── StatsConfigError     a statistics option is out of its documented range

Probes (issue 12)
-----------------
Real processes that age, and the instruments that watch and load them.

- Deployments: a :class:`DeploymentSpec` (:class:`DeploymentKind` ``injector``, ``llmsys``,
  ``llama-cpp`` or ``external`` by PID and URL) runs as a :class:`DeploymentProcess`
  (``start``, ``wait_ready``, ``stop``, ``kill``, ``restart``, ``current_pid``). Every served
  kind speaks the OpenAI API (``/v1/completions``, ``/v1/chat/completions`` with SSE);
  llmsys's own servers (:class:`OpenAIServer` over a :class:`TextEngine`) add ``/health``,
  ``/metrics`` and ``/debug/requests``.
- Ground truth: :class:`InjectorConfig` / :class:`InjectorKind` - per request, per token,
  anonymous mmap never unmapped, saturating cache, delayed leak, zero-rate control;
  ``InjectorConfig.expected_bytes(requests, tokens)`` is the exact retained size.
- Real servers: :class:`ServerConfig` (transformers, bundled SmolLM2, prefix reuse, threads,
  :class:`GcMode`) and :class:`LlamaServerConfig` (llama-cpp-python).
- :class:`Monitor` samples each :class:`MonitorTarget` in its own thread per
  :class:`MonitorConfig`: process-tree RSS/threads/fds/CPU each tick (:class:`ProcessTree`),
  PSS/anon/swap at a slower rate, GPU memory through a :class:`GpuBackend` (NVML or
  recorded replay), scraped ``requests``/``tokens``; one row per tick, missed ticks marked,
  never filled in; ``OUT/<target>.csv`` is what :func:`load_deployment_csv` reads.
- :func:`run_load` drives one server per :class:`LoadConfig` (:class:`ArrivalProcess`
  Poisson, gamma or closed loop; heavy-tailed lengths; :class:`Endpoint`) and streams
  per-request records (TTFT, ITL) to disk; :class:`LoadSummary` keeps bounded aggregates and
  :class:`LoadProgress` feeds live counts to a monitor target without ``/metrics``.

Exceptions (probes)::

    llmsys.core.errors.ConfigError (ValueError)
    └── ProbeConfigError     a deployment, injector, monitor or load option is out of range
    llmsys.core.errors.ResourceError (RuntimeError)
    └── DeploymentError      a deployment failed to start, died, or never became ready

Campaigns (issue 13)
--------------------
A :class:`CampaignConfig` (TOML, :func:`load_campaign_config`; unknown keys are errors) names
co-located deployments, one :class:`StressConfig` they all get, :class:`SamplingConfig` and
:class:`AnalysisSettings` (metric family, alpha, correction). :func:`run_campaign` creates a
:class:`CampaignStore` directory and runs segment 0 (monitor fsync'ed every interval,
supervisor recording crashes and restarting); :func:`resume_campaign` appends a segment,
adopting deployments a killed runner left alive; :func:`analyze_campaign` merges the
segments and runs :func:`analyze_family` into :class:`Verdict` s (:class:`VerdictKind`)
set against the control; :func:`write_report` writes HTML, Markdown and PNG plots.

Exceptions (campaigns)::

    llmsys.core.errors.ConfigError (ValueError)
    └── CampaignConfigError  a campaign option is unknown, missing or out of range
    llmsys.core.errors.InputError (ValueError)
    └── CampaignError        a campaign directory is missing, foreign, complete or unusable
"""

from typing import TYPE_CHECKING

from llmsys.core.lazy import lazy_exports

if TYPE_CHECKING:
    from llmsys.aging.analyze import (
        AnalysisConfig,
        FamilyAnalysis,
        MetricAnalysis,
        MetricSeries,
        analyze_family,
        analyze_metric,
    )
    from llmsys.aging.autocorr import aggregate_time_bins, hamed_rao_var_s, sieve_bootstrap_var_s
    from llmsys.aging.campaign import SegmentResult, resume_campaign, run_campaign
    from llmsys.aging.campaign_config import (
        AnalysisSettings,
        CampaignConfig,
        CampaignConfigError,
        CampaignError,
        SamplingConfig,
        StressConfig,
        load_campaign_config,
    )
    from llmsys.aging.campaign_store import CampaignStore
    from llmsys.aging.changepoint import ChangePoints, detect_changepoints
    from llmsys.aging.csvio import Deployment, load_deployment_csv
    from llmsys.aging.deployments import (
        DeploymentKind,
        DeploymentProcess,
        DeploymentSpec,
        free_port,
        serve_deployment,
    )
    from llmsys.aging.gpu import (
        GpuBackend,
        GpuSnapshot,
        NvmlBackend,
        RecordingGpuBackend,
        ReplayGpuBackend,
        detect_gpu_backend,
    )
    from llmsys.aging.growth import Growth, TimeToExhaustion, classify_growth, time_to_exhaustion
    from llmsys.aging.injectors import InjectorConfig, InjectorEngine, InjectorKind, serve_injector
    from llmsys.aging.llama_server import (
        LlamaServerConfig,
        llama_cpp_available,
        llama_server_command,
    )
    from llmsys.aging.loadgen import (
        ArrivalProcess,
        Endpoint,
        LatencyHistogram,
        LoadConfig,
        LoadProgress,
        LoadSummary,
        run_load,
    )
    from llmsys.aging.mann_kendall import MannKendallResult, mann_kendall, mann_kendall_s
    from llmsys.aging.monitor import Monitor, MonitorConfig, MonitorTarget
    from llmsys.aging.multiple_testing import Correction, adjust_log10_p, significant_after
    from llmsys.aging.normalize import WorkSlopes, work_slopes
    from llmsys.aging.openai_api import OpenAIServer, TextEngine
    from llmsys.aging.openai_server import GcMode, ServerConfig, TransformersEngine, serve_llmsys
    from llmsys.aging.options import Alternative, Detrend, TrendMethod
    from llmsys.aging.probe_errors import DeploymentError, ProbeConfigError
    from llmsys.aging.procfs import ProcessTree
    from llmsys.aging.report import (
        CampaignAnalysis,
        Verdict,
        VerdictKind,
        analyze_campaign,
        write_report,
    )
    from llmsys.aging.sen_slope import SenSlope, pairwise_slope_order_stats, sen_slope, sen_slope_ci
    from llmsys.aging.stats_errors import CsvFormatError, SeriesError, StatsConfigError
    from llmsys.aging.trend import TrendConfig, TrendTest, trend_test

__all__ = [
    "Alternative",
    "AnalysisConfig",
    "AnalysisSettings",
    "ArrivalProcess",
    "CampaignAnalysis",
    "CampaignConfig",
    "CampaignConfigError",
    "CampaignError",
    "CampaignStore",
    "ChangePoints",
    "Correction",
    "CsvFormatError",
    "Deployment",
    "DeploymentError",
    "DeploymentKind",
    "DeploymentProcess",
    "DeploymentSpec",
    "Detrend",
    "Endpoint",
    "FamilyAnalysis",
    "GcMode",
    "GpuBackend",
    "GpuSnapshot",
    "Growth",
    "InjectorConfig",
    "InjectorEngine",
    "InjectorKind",
    "LatencyHistogram",
    "LlamaServerConfig",
    "LoadConfig",
    "LoadProgress",
    "LoadSummary",
    "MannKendallResult",
    "MetricAnalysis",
    "MetricSeries",
    "Monitor",
    "MonitorConfig",
    "MonitorTarget",
    "NvmlBackend",
    "OpenAIServer",
    "ProbeConfigError",
    "ProcessTree",
    "RecordingGpuBackend",
    "ReplayGpuBackend",
    "SamplingConfig",
    "SegmentResult",
    "SenSlope",
    "SeriesError",
    "ServerConfig",
    "StatsConfigError",
    "StressConfig",
    "TextEngine",
    "TimeToExhaustion",
    "TransformersEngine",
    "TrendConfig",
    "TrendMethod",
    "TrendTest",
    "Verdict",
    "VerdictKind",
    "WorkSlopes",
    "adjust_log10_p",
    "aggregate_time_bins",
    "analyze_campaign",
    "analyze_family",
    "analyze_metric",
    "classify_growth",
    "detect_changepoints",
    "detect_gpu_backend",
    "free_port",
    "hamed_rao_var_s",
    "llama_cpp_available",
    "llama_server_command",
    "load_campaign_config",
    "load_deployment_csv",
    "mann_kendall",
    "mann_kendall_s",
    "pairwise_slope_order_stats",
    "resume_campaign",
    "run_campaign",
    "run_load",
    "sen_slope",
    "sen_slope_ci",
    "serve_deployment",
    "serve_injector",
    "serve_llmsys",
    "sieve_bootstrap_var_s",
    "significant_after",
    "time_to_exhaustion",
    "trend_test",
    "work_slopes",
    "write_report",
]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
