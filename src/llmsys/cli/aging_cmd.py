"""``llmsys aging ...`` subcommands.

Each group of subcommands registers itself through one function called from
:func:`register`: :func:`register_analyze` adds ``analyze`` (trend statistics, issue 11);
the probe commands (issue 12) add theirs the same way.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmsys.aging.multiple_testing import Correction
from llmsys.aging.options import Alternative, Detrend
from llmsys.core.errors import ConfigError

if TYPE_CHECKING:
    from llmsys.aging.analyze import MetricSeries


def register(sub: Any) -> None:
    """Add the ``aging`` subcommand and its children to ``sub`` (an argparse subparsers object)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "aging",
        help="software-aging campaigns for LLM serving: probes, load, trend statistics",
        description="Software aging of LLM serving: start real servers and ground-truth "
        "injectors (serve), sample their memory and resources (monitor), drive them with a "
        "seeded soak load (load), and judge trends with statistics that hold under "
        "autocorrelation and multiple testing (analyze).",
    )
    children = parser.add_subparsers(dest="aging_command", metavar="COMMAND")
    children.required = True
    register_analyze(children)
    register_probes(children)
    register_campaign(children)


def register_analyze(children: Any) -> None:
    """Add ``aging analyze`` to the aging subparsers ``children``."""
    p: argparse.ArgumentParser = children.add_parser(
        "analyze",
        help="trend statistics over deployment CSVs",
        description=(
            "Test every (deployment, metric) of the given CSVs for a monotonic trend that "
            "holds under autocorrelation (default: sieve bootstrap of Mann-Kendall S on "
            "block means), with exact Theil-Sen slopes per hour, growth shape, time to "
            "exhaustion and a multiple-testing correction over the family. Each CSV is "
            "one deployment (its file stem) with column t (seconds), optional cumulative "
            "requests and tokens, and one column per metric; empty cells are missing "
            "samples."
        ),
    )
    p.add_argument("csv", nargs="+", type=Path, metavar="DATA.csv", help="deployment CSV files")
    p.add_argument("--alpha", type=float, default=0.05, help="family significance level (0.05)")
    p.add_argument(
        "--correction",
        choices=[c.value for c in Correction],
        default=Correction.BH.value,
        help="multiple-testing correction over the family (bh)",
    )
    p.add_argument(
        "--alternative",
        choices=[a.value for a in Alternative],
        default=Alternative.INCREASING.value,
        help="trend direction tested (increasing)",
    )
    p.add_argument(
        "--capacity-bytes",
        type=float,
        default=None,
        help="capacity for time to exhaustion, in the metrics' unit (bytes)",
    )
    p.add_argument(
        "--detrend",
        choices=[d.value for d in Detrend],
        default=Detrend.LINE.value,
        help="what the noise model is fitted after: the Sen line (default, validated) or the "
        "best growth shape (also finds caches that fill early, but over-rejects on strongly "
        "autocorrelated noise: about 0.09 at AR(1) phi 0.99; experimental)",
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")
    p.set_defaults(handler=run_analyze)


def _family(paths: list[Path]) -> dict[str, MetricSeries]:
    from llmsys.aging.analyze import MetricSeries
    from llmsys.aging.csvio import load_deployment_csv

    family: dict[str, MetricSeries] = {}
    stems = [path.stem for path in paths]
    if len(set(stems)) != len(stems):
        raise ConfigError(f"two CSV files share a deployment name (file stem): {stems}")
    for path in paths:
        dep = load_deployment_csv(path)
        for metric, values in dep.metrics.items():
            key = metric if len(paths) == 1 else f"{dep.name}/{metric}"
            family[key] = MetricSeries(dep.t_s, values, dep.requests, dep.tokens)
    return family


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def run_analyze(args: argparse.Namespace) -> int:
    """Handler of ``llmsys aging analyze``; returns the exit status."""
    if not 0.0 < args.alpha < 1.0:
        raise ConfigError(f"--alpha must be in (0, 1), got {args.alpha}")
    if args.capacity_bytes is not None and not args.capacity_bytes > 0:
        raise ConfigError(f"--capacity-bytes must be > 0, got {args.capacity_bytes}")
    # the statistics import scipy.signal (~1 s): only the command that runs them loads them
    from llmsys.aging.analyze import AnalysisConfig, analyze_family
    from llmsys.aging.trend import TrendConfig

    config = AnalysisConfig(
        trend=TrendConfig(alternative=Alternative(args.alternative), detrend=Detrend(args.detrend)),
        alpha=args.alpha,
        correction=Correction(args.correction),
        capacity=args.capacity_bytes,
    )
    family = _family(list(args.csv))
    from tqdm import tqdm

    with tqdm(
        total=len(family),
        desc="analyze",
        unit="metric",
        file=sys.stderr,
        leave=False,
        disable=not sys.stderr.isatty(),
    ) as bar:
        result = analyze_family(family, config, progress=lambda _key: bar.update(1))
    doc = _clean(result.to_json())
    if args.json:
        print(json.dumps(doc))
        return 0
    print(f"family of {len(doc['family'])}, correction {doc['correction']}, alpha {doc['alpha']}")
    print(f"{'metric':<32} {'log10 p':>9} {'sig':>4} {'slope/h':>12} {'growth':>10} {'tte_h':>9}")
    for key, m in doc["metrics"].items():
        tte = "-" if m["tte_h"] is None else f"{m['tte_h']:.1f}"
        print(
            f"{key:<32} {m['log10_p']:>9.2f} {('yes' if m['significant'] else 'no'):>4} "
            f"{m['slope_per_h']:>12.4g} {m['growth']:>10} {tte:>9}"
        )
    return 0


# ----------------------------------------------------------------------- probes (issue 12)
def register_probes(children: Any) -> None:
    """Add ``serve``, ``monitor`` and ``load`` (the aging probes) to ``children``."""
    from llmsys.aging.deployments import DeploymentKind
    from llmsys.aging.injectors import InjectorConfig
    from llmsys.aging.llama_server import LlamaServerConfig
    from llmsys.aging.loadgen import ArrivalProcess
    from llmsys.aging.openai_server import ServerConfig

    serve = children.add_parser(
        "serve",
        help="run one deployment's OpenAI-compatible server in the foreground",
        description=(
            "Start a deployment by hand. KIND 'injector' is a model-free server with exact, "
            "known memory behaviour; 'llmsys' is llmsys's own server over transformers with "
            "the bundled model; 'llama-cpp' is llama-cpp-python's server with the bundled GGUF. "
            f"Config keys - injector: {_keys(InjectorConfig)}; llmsys: {_keys(ServerConfig)}; "
            f"llama-cpp: {_keys(LlamaServerConfig)}."
        ),
    )
    kinds = [k.value for k in DeploymentKind if k is not DeploymentKind.EXTERNAL]
    serve.add_argument("kind", choices=kinds, metavar="KIND", help=f"one of {kinds}")
    serve.add_argument("--config", default="{}", help="JSON object, or a .json/.toml file")
    serve.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (VALUE parsed as JSON when it can be)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port)")
    serve.set_defaults(handler=_serve)

    mon = children.add_parser(
        "monitor",
        help="sample processes (RSS, PSS, anon, swap, fds, GPU, /metrics) to CSV",
        description=(
            "Sample each PID's process tree every --interval-s (RSS, threads, fds, CPU, GPU) "
            "and every --detail-interval-s (PSS, anon, swap from smaps_rollup/status) into "
            "OUT/pid<PID>.csv; host memory and the monitor's own RSS/CPU go to OUT/host.csv, "
            "missed samples and PID changes to OUT/events.jsonl."
        ),
    )
    mon.add_argument("pids", nargs="+", type=int, metavar="PID", help="root PIDs to watch")
    mon.add_argument("--out", required=True, type=Path, help="output folder")
    mon.add_argument(
        "--metrics-url",
        action="append",
        default=[],
        metavar="PID=URL",
        help="Prometheus endpoint of a PID (gives the requests/tokens columns)",
    )
    mon.add_argument("--interval-s", type=float, default=1.0, help="fast sampling period")
    mon.add_argument(
        "--detail-interval-s",
        type=float,
        default=10.0,
        help="smaps_rollup/status period (a multiple of --interval-s)",
    )
    mon.add_argument(
        "--tree-refresh-s",
        type=float,
        default=5.0,
        help="how often descendants are re-discovered (0: every tick)",
    )
    mon.add_argument("--duration-s", type=float, default=None, help="stop after (default: ^C)")
    mon.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve the monitor's own Prometheus metrics on this port",
    )
    mon.add_argument(
        "--gpu-replay",
        type=Path,
        default=None,
        help="replay recorded GPU snapshots (JSONL) instead of NVML",
    )
    mon.set_defaults(handler=_monitor)

    load = children.add_parser(
        "load",
        help="drive an OpenAI-compatible server with a seeded soak load",
        description=(
            "Send seeded open-loop (poisson/gamma) or closed-loop requests with heavy-tailed "
            "prompt and output lengths; per-request records go to OUT/requests.jsonl and the "
            "client's own RSS/CPU to OUT/client.csv. Prints a JSON summary."
        ),
    )
    load.add_argument("url", help="server base URL, e.g. http://127.0.0.1:8000")
    load.add_argument("--rate", type=float, default=1.0, help="mean arrivals per second")
    load.add_argument("--duration", type=float, required=True, help="seconds of arrivals")
    load.add_argument("--arrival", choices=[a.value for a in ArrivalProcess], default="poisson")
    load.add_argument("--gamma-shape", type=float, default=1.0, help="gamma gap shape")
    load.add_argument("--concurrency", type=int, default=1, help="closed-loop workers")
    load.add_argument("--max-in-flight", type=int, default=64, help="open-loop bound")
    load.add_argument("--seed", type=int, default=0)
    load.add_argument("--chat", action="store_true", help="use /v1/chat/completions")
    load.add_argument("--no-stream", action="store_true", help="ask for whole responses")
    load.add_argument("--model", default=None, help="'model' field to send")
    load.add_argument("--prompt-words", type=float, default=32.0, help="median prompt words")
    load.add_argument("--output-tokens", type=float, default=16.0, help="median max_tokens")
    load.add_argument("--out", type=Path, default=Path("results/aging-load"), help="folder")
    load.set_defaults(handler=_load)


def _keys(config_class: Any) -> str:
    return ", ".join(config_class.__dataclass_fields__)


def _parse_config(text: str, overrides: list[str]) -> dict[str, Any]:
    import json
    import tomllib

    from llmsys.core.errors import InputError

    path = Path(text)
    try:
        if text.lstrip().startswith("{"):
            config = json.loads(text)
        elif path.suffix == ".toml":
            config = tomllib.loads(path.read_text())
        else:
            config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(
            f"--config {text!r} is neither a JSON object nor a readable file: {exc}"
        ) from exc
    if not isinstance(config, dict):
        raise InputError("--config must hold a JSON/TOML object")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--set expects KEY=VALUE, not {item!r}")
        try:
            config[key] = json.loads(value)
        except ValueError:
            config[key] = value
    return config


def _serve(args: argparse.Namespace) -> int:
    from llmsys.aging.deployments import DeploymentKind, serve_deployment

    serve_deployment(
        DeploymentKind(args.kind), _parse_config(args.config, args.set), args.host, args.port
    )
    return 0


def _wait(duration_s: float | None, stop: Any) -> None:
    import time

    from tqdm import tqdm

    if duration_s is None:
        while not stop.wait(1.0):
            pass
        return
    with tqdm(total=round(duration_s), unit="s", disable=None) as bar:
        end = time.monotonic() + duration_s
        while not stop.wait(min(1.0, max(0.0, end - time.monotonic()))):
            bar.n = min(round(duration_s), round(duration_s - (end - time.monotonic())))
            bar.refresh()
            if time.monotonic() >= end:
                break


def _monitor(args: argparse.Namespace) -> int:
    import threading

    from llmsys.aging.gpu import GpuBackend, ReplayGpuBackend, detect_gpu_backend
    from llmsys.aging.monitor import Monitor, MonitorConfig, MonitorTarget
    from llmsys.core.errors import InputError

    urls: dict[int, str] = {}
    for item in args.metrics_url:
        pid, sep, url = item.partition("=")
        if not sep or not pid.isdigit():
            raise InputError(f"--metrics-url expects PID=URL, not {item!r}")
        urls[int(pid)] = url
    config = MonitorConfig(
        interval_s=args.interval_s,
        detail_interval_s=args.detail_interval_s,
        scrape_timeout_s=min(0.5, args.interval_s),
        tree_refresh_s=args.tree_refresh_s,
        metrics_port=args.metrics_port,
    )
    gpu: GpuBackend | None = (
        ReplayGpuBackend.from_file(args.gpu_replay) if args.gpu_replay else detect_gpu_backend()
    )
    targets = [MonitorTarget.for_pid(p, metrics_url=urls.get(p)) for p in dict.fromkeys(args.pids)]
    monitor = Monitor(targets, args.out, config, gpu)
    stop = threading.Event()
    monitor.start()
    try:
        _wait(args.duration_s, stop)
    except KeyboardInterrupt:
        pass
    finally:
        monitor.stop()
    for target in targets:
        print(f"{target.name}: {monitor.csv_path(target.name)}")
    return 0


def _load(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    import threading

    from llmsys.aging.loadgen import ArrivalProcess, Endpoint, LoadConfig, LoadSummary, run_load

    config = LoadConfig(
        url=args.url,
        arrival=ArrivalProcess(args.arrival),
        rate_rps=args.rate,
        gamma_shape=args.gamma_shape,
        concurrency=args.concurrency,
        max_in_flight=args.max_in_flight,
        duration_s=args.duration,
        seed=args.seed,
        endpoint=Endpoint.CHAT if args.chat else Endpoint.COMPLETIONS,
        stream=not args.no_stream,
        model=args.model,
        prompt_words_median=args.prompt_words,
        output_tokens_median=args.output_tokens,
    )
    stop = threading.Event()
    result: list[LoadSummary] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            result.append(run_load(config, args.out, stop))
        except BaseException as exc:  # re-raised below in the main thread
            failure.append(exc)
            stop.set()

    worker = threading.Thread(target=work)
    worker.start()
    try:
        _wait(args.duration, stop)
        worker.join()
    except KeyboardInterrupt:
        stop.set()
        worker.join()
    if failure:
        raise failure[0]
    summary = dataclasses.asdict(result[0])
    summary["out_dir"] = str(summary["out_dir"])
    print(json.dumps(summary))
    return 0


# ----------------------------------------------------------------------- campaigns (issue 13)
def register_campaign(children: Any) -> None:
    """Add ``run``, ``resume`` and ``report`` (aging campaigns) to ``children``."""
    run = children.add_parser(
        "run",
        help="run an aging campaign from a TOML config into a campaign directory",
        description=(
            "Start every deployment of CONFIG (co-located), sample them with the monitor "
            "(fsync'ed every sampling interval), supervise them (a crash is recorded and "
            "restarted if configured) and load them all with the same stress for duration_s. "
            "Ctrl-C ends the segment cleanly; 'resume DIR' continues it, also after kill -9. "
            "Writes the report at the end unless --no-report. " + _campaign_keys()
        ),
    )
    run.add_argument("config", type=Path, metavar="CONFIG", help="campaign TOML file")
    run.add_argument(
        "--out", type=Path, default=None, help="campaign directory (results/aging/NAME)"
    )
    run.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    run.set_defaults(handler=_campaign_run)
    resume = children.add_parser(
        "resume",
        help="continue an interrupted campaign in DIR",
        description=(
            "Open a new run segment in DIR: adopt deployments the killed runner left alive "
            "(same PID and start time, healthy), start the others, and run the stress time "
            "that is left. Appends; nothing already written is changed."
        ),
    )
    resume.add_argument("dir", type=Path, metavar="DIR", help="campaign directory")
    resume.add_argument("--no-report", action="store_true", help="do not write the report")
    resume.set_defaults(handler=_campaign_resume)
    report = children.add_parser(
        "report",
        help="write the HTML/Markdown report of the campaign in DIR",
        description=(
            "Merge the segments, run the trend pipeline over the configured family "
            "(every deployment x metric), and write DIR/report/report.html, report.md, "
            "plots/*.png and verdicts.json. The HTML needs no network."
        ),
    )
    report.add_argument("dir", type=Path, metavar="DIR", help="campaign directory")
    report.set_defaults(handler=_campaign_report)


def _campaign_keys() -> str:
    """The TOML tables and keys, from the config dataclasses (so help and code agree)."""
    from llmsys.aging.campaign_config import (
        AnalysisSettings,
        CampaignConfig,
        SamplingConfig,
        StressConfig,
    )
    from llmsys.aging.deployments import DeploymentSpec

    tables: dict[str, Any] = {"top level": CampaignConfig, "[sampling]": SamplingConfig}
    tables |= {"[stress]": StressConfig, "[analysis]": AnalysisSettings}
    tables["[[deployments]]"] = DeploymentSpec
    skip = {"deployments", "sampling", "stress", "analysis"}
    return "Config keys - " + "; ".join(
        f"{t}: {', '.join(f for f in c.__dataclass_fields__ if f not in skip)}"
        for t, c in tables.items()
    )


def _campaign_progress(total_s: float) -> Any:
    from tqdm import tqdm

    return tqdm(total=round(total_s), unit="s", desc="stress", file=sys.stderr, disable=None)


def _campaign_segment(start: Any, total_s: float, no_report: bool, root: Path) -> int:
    import signal
    import threading

    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    bar = _campaign_progress(total_s)

    def progress(done_s: float, _total_s: float) -> None:
        bar.n = round(done_s)
        bar.refresh()

    try:
        result = start(progress, stop)
    except KeyboardInterrupt:
        stop.set()
        print(f"interrupted; continue with: llmsys aging resume {root}", file=sys.stderr)
        return 1
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, previous)
    state = (
        "complete" if result.complete else f"incomplete (resume with: llmsys aging resume {root})"
    )
    print(f"segment {result.segment}: {result.stress_done_s:.0f} s of stress done, {state}; "
          f"crashes {result.crashes}, adopted {list(result.adopted)}")  # fmt: skip
    if result.complete and not no_report:
        return _campaign_report(argparse.Namespace(dir=root))
    return 0


def _campaign_run(args: argparse.Namespace) -> int:
    from llmsys.aging.campaign import run_campaign
    from llmsys.aging.campaign_config import load_campaign_config

    config = load_campaign_config(args.config)
    root = args.out or Path("results/aging") / config.name
    return _campaign_segment(
        lambda progress, stop: run_campaign(config, root, progress, stop),
        config.duration_s,
        args.no_report,
        root,
    )


def _campaign_resume(args: argparse.Namespace) -> int:
    from llmsys.aging.campaign import resume_campaign
    from llmsys.aging.campaign_store import CampaignStore

    config = CampaignStore(args.dir).config()
    return _campaign_segment(
        lambda progress, stop: resume_campaign(args.dir, progress, stop),
        config.duration_s,
        args.no_report,
        args.dir,
    )


def _campaign_report(args: argparse.Namespace) -> int:
    from llmsys.aging.report import analyze_campaign, write_report

    analysis = analyze_campaign(args.dir)
    paths = write_report(args.dir, analysis)
    for v in analysis.verdicts:
        per_1k = "-" if v.slope_per_1k_requests is None else f"{v.slope_per_1k_requests:.4g}"
        print(f"{v.deployment:<16} {v.metric:<14} {v.verdict.value:<10} {v.growth.value:<10} "
              f"slope/h {v.slope_per_h:.4g}  per 1k req {per_1k}")  # fmt: skip
    print(f"report: {paths['html']}")
    return 0
