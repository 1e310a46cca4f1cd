"""Pins the public names the aging probes (issue 12) export from llmsys.aging."""

import llmsys.aging as aging

PROBE_NAMES = [
    "ArrivalProcess",
    "DeploymentError",
    "DeploymentKind",
    "DeploymentProcess",
    "DeploymentSpec",
    "Endpoint",
    "GcMode",
    "GpuBackend",
    "GpuSnapshot",
    "InjectorConfig",
    "InjectorEngine",
    "InjectorKind",
    "LatencyHistogram",
    "LlamaServerConfig",
    "LoadConfig",
    "LoadProgress",
    "LoadSummary",
    "Monitor",
    "MonitorConfig",
    "MonitorTarget",
    "NvmlBackend",
    "OpenAIServer",
    "ProbeConfigError",
    "ProcessTree",
    "RecordingGpuBackend",
    "ReplayGpuBackend",
    "ServerConfig",
    "TextEngine",
    "TransformersEngine",
    "detect_gpu_backend",
    "free_port",
    "llama_cpp_available",
    "llama_server_command",
    "run_load",
    "serve_deployment",
    "serve_injector",
    "serve_llmsys",
]

PROBE_MODULES = {
    "llmsys.aging.deployments",
    "llmsys.aging.gpu",
    "llmsys.aging.injectors",
    "llmsys.aging.llama_server",
    "llmsys.aging.loadgen",
    "llmsys.aging.monitor",
    "llmsys.aging.openai_api",
    "llmsys.aging.openai_server",
    "llmsys.aging.probe_errors",
    "llmsys.aging.procfs",
}


def test_probe_names_are_exported() -> None:
    assert set(PROBE_NAMES) <= set(aging.__all__)
    for name in PROBE_NAMES:
        assert getattr(aging, name) is not None


def test_probe_names_are_pinned() -> None:
    # every name llmsys.aging exports from a probe module, and nothing more
    ours = sorted(
        n for n in aging.__all__ if getattr(getattr(aging, n), "__module__", "") in PROBE_MODULES
    )
    assert ours == sorted(PROBE_NAMES)
