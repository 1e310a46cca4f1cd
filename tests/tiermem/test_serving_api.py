"""Pins the public surface of llmsys.tiermem.serving."""

import llmsys.tiermem.serving as serving


def test_serving_all_is_pinned() -> None:
    assert sorted(serving.__all__) == [
        "CacheConfig",
        "ComparisonResult",
        "ForesightPrefetcher",
        "KvGeometry",
        "ModelRunner",
        "Request",
        "RequestResult",
        "ServeResult",
        "ServingBenchOptions",
        "ServingEngine",
        "TieredKVConnector",
        "Workload",
        "chat_workload",
        "compare_configs",
        "docs_workload",
        "no_reuse_workload",
        "read_mooncake_trace",
        "run_serving_bench",
    ]
    for name in serving.__all__:
        assert hasattr(serving, name)
