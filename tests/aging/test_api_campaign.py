"""Pins the public names the aging campaigns (issue 13) export from llmsys.aging."""

import llmsys.aging as aging

CAMPAIGN_NAMES = [
    "AnalysisSettings",
    "CampaignAnalysis",
    "CampaignConfig",
    "CampaignConfigError",
    "CampaignError",
    "CampaignStore",
    "SamplingConfig",
    "SegmentResult",
    "StressConfig",
    "Verdict",
    "VerdictKind",
    "analyze_campaign",
    "load_campaign_config",
    "resume_campaign",
    "run_campaign",
    "write_report",
]

CAMPAIGN_MODULES = {
    "llmsys.aging.campaign",
    "llmsys.aging.campaign_config",
    "llmsys.aging.campaign_store",
    "llmsys.aging.report",
}


def test_campaign_names_are_pinned() -> None:
    ours = sorted(
        n for n in aging.__all__ if getattr(getattr(aging, n), "__module__", "") in CAMPAIGN_MODULES
    )
    assert ours == sorted(CAMPAIGN_NAMES)
    for name in CAMPAIGN_NAMES:
        assert getattr(aging, name) is not None
