"""Pins the public names the trend statistics (issue 11) export from llmsys.aging."""

import llmsys.aging as aging

STATS_NAMES = [
    "Alternative",
    "AnalysisConfig",
    "ChangePoints",
    "Correction",
    "CsvFormatError",
    "Deployment",
    "Detrend",
    "FamilyAnalysis",
    "Growth",
    "MannKendallResult",
    "MetricAnalysis",
    "MetricSeries",
    "SenSlope",
    "SeriesError",
    "StatsConfigError",
    "TimeToExhaustion",
    "TrendConfig",
    "TrendMethod",
    "TrendTest",
    "WorkSlopes",
    "adjust_log10_p",
    "aggregate_time_bins",
    "analyze_family",
    "analyze_metric",
    "classify_growth",
    "detect_changepoints",
    "hamed_rao_var_s",
    "load_deployment_csv",
    "mann_kendall",
    "mann_kendall_s",
    "pairwise_slope_order_stats",
    "sen_slope",
    "sen_slope_ci",
    "sieve_bootstrap_var_s",
    "significant_after",
    "time_to_exhaustion",
    "trend_test",
    "work_slopes",
]


STATS_MODULES = {
    "llmsys.aging.analyze",
    "llmsys.aging.autocorr",
    "llmsys.aging.changepoint",
    "llmsys.aging.csvio",
    "llmsys.aging.growth",
    "llmsys.aging.mann_kendall",
    "llmsys.aging.multiple_testing",
    "llmsys.aging.normalize",
    "llmsys.aging.options",
    "llmsys.aging.sen_slope",
    "llmsys.aging.stats_errors",
    "llmsys.aging.trend",
}


def test_stats_names_are_pinned() -> None:
    # every name llmsys.aging exports from a statistics module, and nothing more
    ours = sorted(n for n in aging.__all__ if getattr(aging, n).__module__ in STATS_MODULES)
    assert ours == STATS_NAMES


def test_stats_names_are_exported() -> None:
    assert set(STATS_NAMES) <= set(aging.__all__)
    for name in STATS_NAMES:
        assert getattr(aging, name) is not None
