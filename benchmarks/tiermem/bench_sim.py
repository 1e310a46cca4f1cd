"""Simulated serving comparison on the shipped Mooncake trace, and the CXL-size x prefetch-depth
sweep (h100-cmm profile); also calibrates the this-machine profile.

Every throughput this prints is SIMULATED (the real store, policies and foresight planner
replayed metadata-only, time from the profile). The simulated figures are deterministic; the
only measured quantity is the simulator's own wall time. Modes::

    python benchmarks/tiermem/bench_sim.py                   # whole trace + sweep + plot
    python benchmarks/tiermem/bench_sim.py --requests 300    # CI-sized
    python benchmarks/tiermem/bench_sim.py --serve-calibration results/sim_serving_calib.json
    python benchmarks/tiermem/bench_sim.py --calibrate results/sim_serving_calib.json

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmsys.core.provenance import config_hash, git_sha
from llmsys.tiermem.serving.compare import CacheConfig
from llmsys.tiermem.sim import (
    PAPER_SPEEDUP,
    ReplayOptions,
    load_profile,
    replay,
    requests_from_trace,
    simulate,
)
from llmsys.tiermem.sim.workload import footprint_bytes

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT.parent / "shared" / "data" / "mooncake_synthetic_trace.jsonl"
PLOT = ROOT / "docs" / "img" / "tiermem_sim_sweep.png"
CXL_FACTORS = (0.0, 0.5, 1.0, 2.0, 4.0)
LOOKAHEADS = (1, 2, 4)


def _progress(label: str, done: int, total: int) -> None:
    if done == total:
        print(f"  simulated {label}: {total} requests", file=sys.stderr, flush=True)


def _served(label: str, done: int, total: int) -> None:
    if done == total:
        print(f"  served (measured) {label}: {total} requests", file=sys.stderr, flush=True)


def run_comparison(args: argparse.Namespace) -> dict[str, Any]:
    profile = load_profile(args.profile)
    started = time.perf_counter()
    requests = requests_from_trace(args.trace, profile, requests=args.requests)
    load_s = time.perf_counter() - started
    ratios = tuple(int(r) for r in args.ratios.split(","))
    started = time.perf_counter()
    comparison = simulate(requests, profile, ratios=ratios, progress=_progress)
    sim_s = time.perf_counter() - started
    summary = comparison.summary(4 if 4 in ratios else max(ratios))
    summary["requests"] = len(requests)
    summary["prompt_tokens_total"] = sum(r.prompt_tokens for r in requests)
    summary["trace_load_s"] = load_s
    summary["simulation_wall_s"] = sim_s
    print("SIMULATED throughput (req/s), profile", profile.name)
    for cfg, by_ratio in summary["throughput_rps"].items():
        cells = "  ".join(f"r{r}={v:.3f}" for r, v in by_ratio.items())
        print(f"  {cfg:12s} {cells}")
    for ratio, s in summary["speedup_itme_vs_cpu_offload_by_ratio"].items():
        cap = summary["speedup_unbounded_vs_cpu_offload_by_ratio"][ratio]
        print(
            f"  ratio {ratio}: itme vs cpu-offload {(s - 1) * 100:+.1f}% "
            f"(paper {(PAPER_SPEEDUP - 1) * 100:+.1f}%, unbounded {(cap - 1) * 100:+.1f}%)"
        )
    if not args.no_sweep:
        summary["sweep"] = run_sweep(requests, profile, args.sweep_ratio)
        plot(summary, args.plot)
    print(f"  {len(requests)} requests simulated in {sim_s:.1f} s (trace read {load_s:.1f} s)")
    return summary


def run_sweep(requests: Sequence[Any], profile: Any, ratio: int) -> dict[str, Any]:
    """itme / cpu-offload at ``ratio`` over cxl size (x dram) and prefetch depth."""
    footprint = footprint_bytes(requests)
    base = replay(
        requests, profile, CacheConfig.CPU_OFFLOAD, ratio=ratio, footprint_bytes=footprint
    )
    grid: dict[str, dict[str, float]] = {}
    print(f"SIMULATED sweep at ratio {ratio}: itme / cpu-offload by cxl size and lookahead")
    for lookahead in LOOKAHEADS:
        row = grid.setdefault(str(lookahead), {})
        for factor in CXL_FACTORS:
            run = replay(
                requests,
                profile,
                CacheConfig.ITME,
                ratio=ratio,
                footprint_bytes=footprint,
                options=ReplayOptions(lookahead=lookahead, cxl_factor=factor),
            )
            row[str(factor)] = run.throughput_rps / base.throughput_rps
        cells = "  ".join(f"cxl {f}x={row[str(f)]:.3f}" for f in CXL_FACTORS)
        print(f"  lookahead {lookahead}: {cells}")
    return {"ratio": ratio, "cxl_factors": list(CXL_FACTORS), "speedup": grid}


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=90)
    thr = summary["throughput_rps"]
    ratios = sorted(int(r) for r in thr["cpu-offload"])
    for cfg, style in (("itme", "o-"), ("dram-ssd", "s--"), ("cpu-offload", "^:")):
        left.plot(ratios, [thr[cfg][str(r)] for r in ratios], style, label=cfg)
    left.axhline(thr["unbounded"]["-"], color="grey", lw=0.8, label="unbounded")
    left.axhline(thr["recompute"]["-"], color="black", lw=0.8, ls="--", label="recompute")
    left.set_xscale("log", base=2)
    left.set_xlabel("footprint / DRAM ratio")
    left.set_ylabel("simulated req/s")
    left.set_title(f"SIMULATED, {summary['profile']}", fontsize=9)
    left.legend(fontsize=7)
    sweep = summary["sweep"]
    factors = sweep["cxl_factors"]
    for lookahead, row in sweep["speedup"].items():
        right.plot(
            factors,
            [(row[str(f)] - 1) * 100 for f in factors],
            "o-",
            label=f"lookahead {lookahead}",
        )
    right.axhline((PAPER_SPEEDUP - 1) * 100, color="red", lw=0.8, ls="--", label="paper +35.7%")
    right.set_xlabel("CXL size (x DRAM)")
    right.set_ylabel("itme vs cpu-offload (%)")
    right.set_title(f"SIMULATED sweep at ratio {sweep['ratio']}", fontsize=9)
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"  plot saved to {path}")


def serve_calibration(
    out: Path, footprint_mib: float, workload: str, repeats: int
) -> dict[str, Any]:
    """Real serving runs (CI-sized) at ratios 1, 2, 4, 8, ``repeats`` times back to back;
    throughputs are the per-(config, ratio) medians -> JSON for --calibrate."""
    import statistics

    from llmsys.tiermem.serving import ServingBenchOptions, Workload, run_serving_bench

    options = ServingBenchOptions(
        workload=Workload(workload),
        footprint_mib=footprint_mib,
        ratios=(1, 2, 4, 8),
        miss_requests=0,
        repeats=1,
    )
    runs = [run_serving_bench(options, _served) for _ in range(repeats)]
    summary = dict(runs[0])
    summary["throughput_rps"] = {
        cfg: {
            ratio: statistics.median(run["throughput_rps"][cfg][ratio] for run in runs)
            for ratio in by_ratio
        }
        for cfg, by_ratio in runs[0]["throughput_rps"].items()
    }
    summary["throughput_rps_runs"] = [run["throughput_rps"] for run in runs]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, default=str) + "\n", encoding="utf-8")
    print("measured serving throughput (req/s), median of", repeats, "runs")
    for cfg, by_ratio in summary["throughput_rps"].items():
        print(f"  {cfg:12s} " + "  ".join(f"r{r}={v:.3f}" for r, v in by_ratio.items()))
    return summary


def measure(out: Path) -> dict[str, Any]:
    """Microbenchmarks only (model on the serving grid, tiers) -> JSON for --measurements."""
    import torch

    from llmsys.core.model import load_bundled_model
    from llmsys.tiermem.serving import ModelRunner
    from llmsys.tiermem.sim.calibrate import measure_machine

    torch.set_num_threads(1)
    runner = ModelRunner(load_bundled_model(), 16, 4)  # the serving comparison's grid
    result = measure_machine(runner).to_dict()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result) + "\n", encoding="utf-8")
    for key, value in result.items():
        print(f"  {key:24s} {value}")
    return result


def calibrate(serving_json: Path, out: Path, measured: Path | None) -> dict[str, Any]:
    from llmsys.tiermem.sim.calibrate import MachineMeasurements, calibrate_from_serving

    summary = json.loads(serving_json.read_text(encoding="utf-8").strip().splitlines()[-1])
    given = (
        MachineMeasurements.from_dict(json.loads(measured.read_text(encoding="utf-8")))
        if measured is not None
        else None
    )
    profile, measurements = calibrate_from_serving(
        summary, source=str(serving_json), measurements=given
    )
    from llmsys.tiermem.sim import profile_to_toml

    header = (
        "this-machine: calibrated by benchmarks/tiermem/bench_sim.py --calibrate "
        f"{serving_json.name}\non {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        "microbenchmarks + a fit on serving runs at ratios 1, 2 only"
    )
    out.write_text(profile_to_toml(profile, header), encoding="utf-8")
    cal = profile.calibration
    assert cal is not None
    print("this-machine calibration: held-out relative throughput errors (SIMULATED vs measured)")
    for cfg, by_ratio in cal.errors.items():
        print("  " + cfg.ljust(12) + "  ".join(f"r{r}={e:+.1%}" for r, e in by_ratio.items()))
    print(f"  calibration_error_max = {cal.error_max:.3f}; profile written to {out}")
    return {
        "simulated": True,
        "profile": profile.name,
        "calibration_error_max": cal.error_max,
        "calibration_errors": cal.errors,
        "fit_ratios": list(cal.fit_ratios),
        "held_out_ratios": list(cal.held_out_ratios),
        "measured": {
            k: getattr(measurements, k)
            for k in ("prefill_pass_s", "prefill_token_s", "prefill_pair_s", "decode_token_s")
        },
        "fitted_request_overhead_s": profile.request_overhead_s,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--profile", default="h100-cmm")
    parser.add_argument("--requests", type=int, default=None, help="first N requests (all)")
    parser.add_argument("--ratios", default="1,2,4,8")
    parser.add_argument("--sweep-ratio", type=int, default=4)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--plot", type=Path, default=PLOT)
    parser.add_argument("--serve-calibration", type=Path, metavar="OUT_JSON")
    parser.add_argument("--footprint-mib", type=float, default=48.0)
    parser.add_argument("--workload", choices=["chat", "docs"], default="docs")
    parser.add_argument("--serve-repeats", type=int, default=2)
    parser.add_argument("--calibrate", type=Path, metavar="SERVING_JSON")
    parser.add_argument("--measure", type=Path, metavar="OUT_JSON", help="microbenchmarks only")
    parser.add_argument("--measurements", type=Path, help="--measure output for --calibrate")
    parser.add_argument(
        "--profile-out",
        type=Path,
        default=ROOT / "src" / "llmsys" / "tiermem" / "sim" / "profiles" / "this-machine.toml",
    )
    args = parser.parse_args(argv)
    if args.serve_calibration:
        result = serve_calibration(
            args.serve_calibration, args.footprint_mib, args.workload, args.serve_repeats
        )
    elif args.measure:
        result = measure(args.measure)
    elif args.calibrate:
        result = calibrate(args.calibrate, args.profile_out, args.measurements)
    else:
        result = run_comparison(args)
    cfg = {k: str(v) for k, v in vars(args).items()}
    result["git_sha"] = git_sha()
    result["config_hash"] = config_hash(cfg)
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
