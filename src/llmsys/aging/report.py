"""Campaign report: the statistics pipeline over a campaign directory, as HTML and Markdown.

Protocol: :func:`analyze_campaign` merges every deployment's segments
(:meth:`~llmsys.aging.campaign_store.CampaignStore.merge`), loads them with
:func:`~llmsys.aging.csvio.load_deployment_csv` and runs
:func:`~llmsys.aging.analyze.analyze_family` over the declared family (every deployment x
every configured metric, one correction over all of it), then turns each
:class:`~llmsys.aging.analyze.MetricAnalysis` into a :class:`Verdict` set against the
control deployment. :func:`write_report` adds one PNG per (deployment, metric) - the
series on the campaign clock in hours, the control in grey, crashes and restarts as
vertical lines - and writes ``DIR/report/report.md``, ``report.html`` (local ``<img>``
links only: it opens with no network) and ``verdicts.json``.

Verdicts: ``aging`` when the trend is significant after the correction and its growth is
linear or step; ``bounded`` for significant saturating growth (a cache, not a leak);
``negligible`` for a significant ``_bytes`` trend slower than the configured
``min_slope_bytes_per_h`` (statistically real, practically irrelevant); else ``clean``.
The per-1,000-request interval is the per-hour interval scaled by the ratio of the two
slopes (exact under the campaign's steady, identical stress).
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from llmsys.aging.analyze import AnalysisConfig, MetricAnalysis, MetricSeries, analyze_family
from llmsys.aging.campaign_store import CampaignStore
from llmsys.aging.csvio import Deployment, load_deployment_csv
from llmsys.aging.growth import Growth
from llmsys.aging.trend import TrendConfig

__all__ = ["CampaignAnalysis", "Verdict", "VerdictKind", "analyze_campaign", "write_report"]

_MIB = float(1 << 20)


class VerdictKind(Enum):
    """What a (deployment, metric) did."""

    AGING = "aging"
    BOUNDED = "bounded"
    NEGLIGIBLE = "negligible"
    CLEAN = "clean"


@dataclass(frozen=True, slots=True)
class Verdict:
    """One row of the verdict table."""

    deployment: str
    """Deployment name."""
    metric: str
    """Monitor column."""
    verdict: VerdictKind
    """aging / bounded / clean (module docstring)."""
    growth: Growth
    """Growth shape from the pipeline."""
    log10_p_adjusted: float
    """log10 p after the family correction."""
    slope_per_h: float
    """Theil-Sen slope, metric units per hour."""
    slope_ci_per_h: tuple[float, float]
    """Its interval, per hour."""
    slope_per_1k_requests: float | None
    """Metric units per 1,000 requests, or None without a request counter."""
    slope_ci_per_1k_requests: tuple[float, float] | None
    """Its interval (scaled from the per-hour one), or None."""
    slope_per_million_tokens: float | None
    """Metric units per million tokens, or None."""
    tte_h: float | None
    """Hours until the capacity (linear growth only), or None."""
    excess_per_h_vs_control: float
    """slope_per_h minus the control's slope_per_h for the same metric."""
    above_control: bool
    """The slope interval lies wholly above the control's."""


@dataclass(frozen=True, slots=True)
class CampaignAnalysis:
    """Verdicts of a campaign and what they came from."""

    verdicts: tuple[Verdict, ...]
    """One per (deployment, metric) of the family, deployment-major."""
    control: str
    """The control deployment."""
    capacity_bytes: int
    """Capacity used for the time to exhaustion of ``_bytes`` metrics."""
    deployments: dict[str, Deployment]
    """Merged samples per deployment (campaign clock)."""
    events: tuple[dict[str, Any], ...]
    """The campaign's events (crashes, restarts, segments)."""

    def verdict(self, deployment: str, metric: str) -> Verdict:
        """The verdict of one (deployment, metric). Raises KeyError if not in the family."""
        for v in self.verdicts:
            if v.deployment == deployment and v.metric == metric:
                return v
        raise KeyError(f"{deployment}/{metric}")


def analyze_campaign(root: Path) -> CampaignAnalysis:
    """Merge, load and analyse a campaign directory. Raises CampaignError / SeriesError."""
    store = CampaignStore(root)
    record = store.record()
    config = store.config()
    settings = config.analysis
    capacity = int(record["capacity_bytes"])
    deployments = {d.name: load_deployment_csv(store.merge(d.name)) for d in config.deployments}
    family: dict[str, MetricSeries] = {}
    for name, dep in deployments.items():
        for metric in settings.metrics:
            family[f"{name}/{metric}"] = MetricSeries(
                dep.t_s, dep.metrics[metric], dep.requests, dep.tokens
            )
    acfg = AnalysisConfig(
        trend=TrendConfig(method=settings.method, seed=settings.seed),
        alpha=settings.alpha,
        correction=settings.correction,
        capacity=float(capacity),
    )
    result = analyze_family(family, acfg)
    verdicts = []
    for name in deployments:
        for metric in settings.metrics:
            a = result.metrics[f"{name}/{metric}"]
            ctrl = result.metrics[f"{config.control}/{metric}"]
            verdicts.append(_verdict(name, metric, a, ctrl, settings.min_slope_bytes_per_h))
    return CampaignAnalysis(
        tuple(verdicts), config.control, capacity, deployments, tuple(store.events())
    )


def _verdict(
    name: str, metric: str, a: MetricAnalysis, ctrl: MetricAnalysis, min_bytes_per_h: float
) -> Verdict:
    if a.significant and metric.endswith("_bytes") and abs(a.slope_per_h) < min_bytes_per_h:
        kind = VerdictKind.NEGLIGIBLE
    elif a.significant and a.growth in (Growth.LINEAR, Growth.STEP):
        kind = VerdictKind.AGING
    elif a.significant and a.growth is Growth.SATURATING:
        kind = VerdictKind.BOUNDED
    else:
        kind = VerdictKind.CLEAN
    ci_1k: tuple[float, float] | None = None
    if a.slope_per_1k_requests is not None and a.slope_per_h != 0.0:
        scale = a.slope_per_1k_requests / a.slope_per_h
        lo, hi = sorted((a.slope_ci_per_h[0] * scale, a.slope_ci_per_h[1] * scale))
        ci_1k = (lo, hi)
    return Verdict(
        deployment=name,
        metric=metric,
        verdict=kind,
        growth=a.growth,
        log10_p_adjusted=a.log10_p_adjusted,
        slope_per_h=a.slope_per_h,
        slope_ci_per_h=a.slope_ci_per_h,
        slope_per_1k_requests=a.slope_per_1k_requests,
        slope_ci_per_1k_requests=ci_1k,
        slope_per_million_tokens=a.slope_per_million_tokens,
        tte_h=a.tte_h if metric.endswith("_bytes") else None,
        excess_per_h_vs_control=a.slope_per_h - ctrl.slope_per_h,
        above_control=a.slope_ci_per_h[0] > ctrl.slope_ci_per_h[1],
    )


# ----------------------------------------------------------------------- rendering
def _fmt(value: float | None, metric: str) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if metric.endswith("_bytes"):
        return f"{value / _MIB:.3g} MiB"
    return f"{value:.3g}"


def _fmt_ci(ci: tuple[float, float] | None, metric: str) -> str:
    return "-" if ci is None else f"[{_fmt(ci[0], metric)}, {_fmt(ci[1], metric)}]"


def _table(analysis: CampaignAnalysis) -> tuple[list[str], list[list[str]]]:
    head = [
        "deployment", "metric", "verdict", "growth", "log10 p adj", "slope / h", "interval / h",
        "slope / 1k req", "interval / 1k req", "slope / 1M tok", "TTE (h)", "vs control / h",
    ]  # fmt: skip
    rows = []
    for v in analysis.verdicts:
        m = v.metric
        ctrl = " (control)" if v.deployment == analysis.control else ""
        vs = _fmt(v.excess_per_h_vs_control, m) + (" above" if v.above_control else "")
        rows.append([
            v.deployment + ctrl, m, v.verdict.value, v.growth.value, f"{v.log10_p_adjusted:.1f}",
            _fmt(v.slope_per_h, m), _fmt_ci(v.slope_ci_per_h, m),
            _fmt(v.slope_per_1k_requests, m), _fmt_ci(v.slope_ci_per_1k_requests, m),
            _fmt(v.slope_per_million_tokens, m),
            "-" if v.tte_h is None else f"{v.tte_h:.3g}", vs,
        ])  # fmt: skip
    return head, rows


def _plot(
    analysis: CampaignAnalysis, store: CampaignStore, name: str, metric: str, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 3.2), dpi=100)
    scale = _MIB if metric.endswith("_bytes") else 1.0
    dep = analysis.deployments[name]
    span_s = float(dep.t_s[-1])
    t_unit, t_div = ("h", 3600.0) if span_s > 3 * 3600 else ("min", 60.0)
    if span_s <= 600:
        t_unit, t_div = "s", 1.0
    ctrl = analysis.deployments[analysis.control]
    if name != analysis.control:
        ok = np.isfinite(ctrl.metrics[metric])
        ax.plot(ctrl.t_s[ok] / t_div, ctrl.metrics[metric][ok] / scale, color="0.6", lw=1,
                label=f"{analysis.control} (control)")  # fmt: skip
    ok = np.isfinite(dep.metrics[metric])
    ax.plot(dep.t_s[ok] / t_div, dep.metrics[metric][ok] / scale, color="C0", lw=1.2, label=name)
    # crashes (red), restarts and adoptions (orange), later run segments (grey)
    for ev in analysis.events:
        x = store.to_campaign_s(ev.get("wall_time_s", 0.0)) / t_div
        if ev.get("name") == name and ev["event"] == "crash":
            ax.axvline(x, color="C3", ls=":", lw=1.2)
        elif ev.get("name") == name and ev.get("how") in ("restarted", "adopted"):
            ax.axvline(x, color="C1", ls="--", lw=1)
        elif ev["event"] == "segment_start" and ev.get("segment", 0) > 0:
            ax.axvline(x, color="0.4", ls="-.", lw=0.8)
    v = analysis.verdict(name, metric)
    ax.set_title(f"{name} / {metric}: {v.verdict.value} ({v.growth.value})", fontsize=9)
    ax.set_xlabel(f"campaign time ({t_unit})")
    ax.set_ylabel(metric.replace("_bytes", " (MiB)"))
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(root: Path, analysis: CampaignAnalysis | None = None) -> dict[str, Path]:
    """Write ``report/`` (Markdown, HTML, plots, verdicts.json); return the paths by kind."""
    analysis = analysis or analyze_campaign(root)
    store = CampaignStore(root)
    config = store.config()
    out = root / "report"
    (out / "plots").mkdir(parents=True, exist_ok=True)
    plots: list[tuple[str, str, str]] = []
    for name in analysis.deployments:
        for metric in config.analysis.metrics:
            rel = f"plots/{name}__{metric}.png"
            _plot(analysis, store, name, metric, out / rel)
            plots.append((name, metric, rel))
    head, rows = _table(analysis)
    crashes = [e for e in analysis.events if e["event"] == "crash"]
    segments = [e for e in analysis.events if e["event"] == "segment_start"]
    summary = (
        f"Campaign {config.name}: {len(analysis.deployments)} co-located deployments, "
        f"{config.duration_s:g} s of identical stress ({config.stress.arrival.value}, "
        f"{config.stress.rate_rps:g} req/s each), sampled every {config.sampling.interval_s:g} s; "
        f"{len(segments)} run segment(s), {len(crashes)} crash(es). Family of "
        f"{len(analysis.verdicts)} tests, correction {config.analysis.correction.value}, "
        f"alpha {config.analysis.alpha:g}, method {config.analysis.method.value}, "
        f"negligible below {config.analysis.min_slope_bytes_per_h / _MIB:g} MiB/h; "
        f"capacity {analysis.capacity_bytes / _MIB:.0f} MiB. Control: {analysis.control}."
    )
    md = [f"# Aging campaign report: {config.name}", "", summary, "", "## Verdicts", ""]
    md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", "## Plots", ""]
    md += [f"![{n} {m}]({rel})" for n, m, rel in plots]
    (out / "report.md").write_text("\n".join(md) + "\n")
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    imgs = "".join(f'<p><img src="{html.escape(rel)}" alt="{html.escape(n)} {html.escape(m)}"></p>'
                   for n, m, rel in plots)  # fmt: skip
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>Aging campaign {html.escape(config.name)}</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #999;padding:3px 6px}</style></head><body>"
        f"<h1>Aging campaign report: {html.escape(config.name)}</h1><p>{html.escape(summary)}</p>"
        f"<h2>Verdicts</h2><table><tr>{th}</tr>{trs}</table><h2>Plots</h2>{imgs}</body></html>"
    )
    (out / "report.html").write_text(page)
    doc = [_verdict_json(v) for v in analysis.verdicts]
    (out / "verdicts.json").write_text(json.dumps({"control": analysis.control, "verdicts": doc}))
    return {
        "markdown": out / "report.md",
        "html": out / "report.html",
        "json": out / "verdicts.json",
    }


def _verdict_json(v: Verdict) -> dict[str, Any]:
    d = asdict(v)
    d["verdict"], d["growth"] = v.verdict.value, v.growth.value
    return {k: (None if isinstance(x, float) and not math.isfinite(x) else x) for k, x in d.items()}
