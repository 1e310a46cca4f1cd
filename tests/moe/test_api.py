"""Pins the public API of llmsys.moe."""

import llmsys.moe as moe


def test_all_is_pinned() -> None:
    assert sorted(moe.__all__) == [
        "DEEPSEEK_V3",
        "HardwareProfile",
        "HomeLayout",
        "InvalidPlacementError",
        "MODEL_SHAPES",
        "MilpSolution",
        "ModelShape",
        "OLMOE_1B_7B",
        "Placement",
        "Policy",
        "Popularity",
        "QWEN3_30B_A3B",
        "ReplicaCost",
        "RoutingTrace",
        "SimConfig",
        "SimResult",
        "SolverError",
        "Stage",
        "Topology",
        "TraceParams",
        "check_load",
        "generate_trace",
        "home_layout",
        "load_profile",
        "load_trace",
        "pack_homes",
        "plan",
        "plan_eplb",
        "plan_foremoe",
        "plan_reactive",
        "plan_static",
        "rebalance_experts",
        "serve_eplb",
        "simulate",
        "slots_moved",
        "solve_milp",
    ]
    for name in moe.__all__:
        assert hasattr(moe, name)
