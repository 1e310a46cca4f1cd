"""``llmsys demo``'s aging part: a short real campaign with known ground truth.

Three co-located injector deployments under identical Poisson load - a per-request leak,
a saturating cache and the zero-rate control - run for :data:`DEMO_DURATION_S` seconds of
stress, sampled every 0.5 s; the report is written and its verdicts are checked against the
injectors' exact rates.
"""

from __future__ import annotations

from pathlib import Path

from llmsys.aging.campaign import run_campaign
from llmsys.aging.campaign_config import CampaignConfig
from llmsys.aging.report import VerdictKind, analyze_campaign, write_report

__all__ = ["DEMO_DURATION_S", "demo_config", "run_demo"]

DEMO_DURATION_S = 90.0
"""Seconds of stress of the demo campaign."""
_KIB = 1024
_LEAK_BYTES = 256 * _KIB


def demo_config(duration_s: float = DEMO_DURATION_S, name: str = "demo") -> CampaignConfig:
    """Leak, saturating cache (cap reached about half-way) and control at 8 req/s each."""
    return CampaignConfig.from_dict(
        {
            "name": name,
            "duration_s": duration_s,
            "baseline_s": 2.0,
            "control": "control",
            "sampling": {"interval_s": 0.5, "detail_interval_s": 2.0},
            "stress": {
                "rate_rps": 8.0,
                "output_tokens_median": 16,
                "output_tokens_sigma": 0.0,
                "prompt_words_sigma": 0.5,
            },
            # 64 MiB/h: the leak grows ~7 GiB/h here; the control's server keeps a bounded
            # 1,024-entry request-timing log that fills at ~16 MiB/h in a run this short.
            "analysis": {"metrics": ["rss_bytes", "anon_bytes"],
                         "min_slope_bytes_per_h": float(64 << 20)},
            "deployments": [
                {"name": "leak", "kind": "injector",
                 "config": {"kind": "per-request", "leak_bytes": _LEAK_BYTES}},
                {"name": "cache", "kind": "injector",
                 "config": {"kind": "saturating-cache", "leak_bytes": _LEAK_BYTES,
                            "cap_bytes": round(duration_s * 8 * 0.5) * _LEAK_BYTES}},
                {"name": "control", "kind": "injector", "config": {"kind": "control"}},
            ],
        }
    )  # fmt: skip


def run_demo(out_dir: Path) -> list[str]:
    """Run the demo campaign into ``out_dir/aging-campaign`` and summarise its report."""
    root = out_dir / "aging-campaign"
    run_campaign(demo_config(), root)
    analysis = analyze_campaign(root)
    paths = write_report(root, analysis)
    leak = analysis.verdict("leak", "rss_bytes")
    cache = analysis.verdict("cache", "rss_bytes")
    control = [analysis.verdict("control", m) for m in ("rss_bytes", "anon_bytes")]
    per_1k = leak.slope_per_1k_requests
    truth_1k = _LEAK_BYTES * 1000
    rate = "no request counter" if per_1k is None else (
        f"{per_1k / 2**20:.1f} MiB per 1,000 requests (injected {truth_1k / 2**20:.1f}, "
        f"error {abs(per_1k - truth_1k) / truth_1k:.1%})"
    )  # fmt: skip
    lo, hi = leak.slope_ci_per_h
    alarms = any(c.verdict is VerdictKind.AGING for c in control)
    lines = [
        f"leak: {'DETECTED' if leak.verdict is VerdictKind.AGING else 'MISSED'} "
        f"({leak.growth.value}), RSS +{leak.slope_per_h / 2**20:.0f} MiB/h "
        f"[{lo / 2**20:.0f}, {hi / 2**20:.0f}], {rate}",
        f"cache: classified {cache.growth.value} -> verdict {cache.verdict.value} "
        f"({'bounded, not a leak' if cache.verdict is VerdictKind.BOUNDED else 'NOT as expected'})",
        f"control: {'no aging' if not alarms else 'FALSE ALARM'}"
        f" (rss {control[0].verdict.value} {control[0].slope_per_h / 2**20:+.1f} MiB/h, "
        f"anon {control[1].verdict.value} {control[1].slope_per_h / 2**20:+.1f} MiB/h)",
        f"report: {paths['html']} (and report.md, plots/)",
    ]
    return lines
