"""``llmsys demo``'s moe part: plan and simulate a small synthetic RL step.

Protocol: :func:`run_demo` generates a one-step Qwen3-30B-A3B-shaped trace, simulates it
on 64 GPUs under every scalable policy, writes the numbers to ``out_dir/moe_demo.json`` and
returns summary lines. All step times are simulated.
"""

from __future__ import annotations

import json
import pathlib

from llmsys.moe.placement import Policy
from llmsys.moe.simulator import simulate
from llmsys.moe.tracegen import QWEN3_30B_A3B, TraceParams, generate_trace


def run_demo(out_dir: pathlib.Path) -> list[str]:
    """Simulate two RL steps of 8 micro-steps per stage; return human-readable lines."""
    trace = generate_trace(QWEN3_30B_A3B, TraceParams(steps=2, micro_steps=8))
    results = {
        p: simulate(trace, p) for p in (Policy.STATIC, Policy.EPLB, Policy.REACTIVE, Policy.FOREMOE)
    }
    ours = results[Policy.FOREMOE]
    lines = ["moe: SIMULATED 64-GPU RL step (8 nodes x 8 H100, Qwen3-30B-A3B shape, 3 slots/GPU)"]
    record = {}
    for policy, r in results.items():
        speedup = r.step_time_s / ours.step_time_s
        lines.append(
            f"  {policy.value:9s} step {r.step_time_s:7.2f} s (simulated)  imbalance "
            f"{r.imbalance_mean:.3f}  foremoe speedup {speedup:.3f}x "
            f"(ceiling {r.ceiling_vs():.3f}x)  slots moved {r.slots_moved_fraction:.3f}"
        )
        record[policy.value] = {
            "step_time_s": r.step_time_s,
            "imbalance_mean": r.imbalance_mean,
            "speedup_of_foremoe": speedup,
            "ceiling": r.ceiling_vs(),
            "simulated": True,
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "moe_demo.json").write_text(json.dumps(record, indent=2))
    lines.append(f"  written: {out_dir / 'moe_demo.json'}")
    return lines
