"""Pins the public surface of llmsys.tiermem.sim."""

import llmsys.tiermem.sim as sim


def test_sim_all_is_pinned() -> None:
    assert sorted(sim.__all__) == [
        "Calibration",
        "HardwareProfile",
        "LaneClock",
        "MachineMeasurements",
        "PAPER_SPEEDUP",
        "ProfileError",
        "ReplayOptions",
        "SimComparison",
        "SimRequest",
        "SimRequestResult",
        "SimRun",
        "calibrate_profile",
        "footprint_bytes",
        "load_profile",
        "measure_machine",
        "profile_names",
        "profile_to_toml",
        "replay",
        "requests_from_serving",
        "requests_from_trace",
        "sim_namespace",
        "simulate",
    ]
    for name in sim.__all__:
        assert hasattr(sim, name)
