"""Serving the bundled model through the tiered store (the ITME headline).

- :mod:`.workloads` - requests with real reuse (chat sessions, shared documents) and the
  Mooncake trace reader.
- :mod:`.runner` - block-grid prefill, greedy decode, KV <-> block bytes.
- :mod:`.connector` - the store connection in vLLM's KV-connector shape.
- :mod:`.foresight` - the two-stage pipelined prefetcher of queued requests' blocks.
- :mod:`.engine` - the closed-loop engine.
- :mod:`.compare` / :mod:`.bench` - the five-configuration comparison.
"""

from typing import TYPE_CHECKING

from llmsys.core.lazy import lazy_exports

if TYPE_CHECKING:
    from llmsys.tiermem.serving.bench import ServingBenchOptions, Workload, run_serving_bench
    from llmsys.tiermem.serving.compare import CacheConfig, ComparisonResult, compare_configs
    from llmsys.tiermem.serving.connector import TieredKVConnector
    from llmsys.tiermem.serving.engine import RequestResult, ServeResult, ServingEngine
    from llmsys.tiermem.serving.foresight import ForesightPrefetcher
    from llmsys.tiermem.serving.runner import KvGeometry, ModelRunner
    from llmsys.tiermem.serving.workloads import (
        Request,
        chat_workload,
        docs_workload,
        no_reuse_workload,
        read_mooncake_trace,
    )

__all__ = [
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

__getattr__, __dir__ = lazy_exports(__name__, __file__)
