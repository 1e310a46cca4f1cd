"""``llmsys tiermem weights-bench``: stream the bundled model's weights layer-ahead from a tier."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_weights_bench(children: Any) -> None:
    """Register ``weights-bench`` under ``llmsys tiermem``."""
    p: argparse.ArgumentParser = children.add_parser(
        "weights-bench",
        help="run the bundled model with its layer weights streamed from cxl or ssd",
        description="One prefill forward of the bundled model, repeated and interleaved, with "
        "(1) fully resident weights, (2) on-demand loading of each decoder layer from the tier "
        "(no look-ahead), (3) layer-ahead streaming with a window of K layer buffers, and (4) "
        "Hugging Face accelerate's disk offload (page cache warm, and cold). Checks that every "
        "mode's logits equal the resident model's bitwise and reports the peak resident bytes "
        "of layer weights. Ratios weights_stream_vs_X = X's median time / streaming's.",
    )
    p.add_argument(
        "--tier",
        default="cxl",
        metavar="{cxl,ssd}",
        help="tier holding the layer blocks: cxl (emulated pacing where no CXL memory "
        "exists) or ssd (O_DIRECT) (default: %(default)s)",
    )
    p.add_argument(
        "--window",
        type=int,
        metavar="K",
        default=3,
        help="layer buffers resident at once when streaming, >= 1; look-ahead is K-1 "
        "layers (default: %(default)s)",
    )
    p.add_argument(
        "--prompt-tokens",
        type=int,
        default=256,
        help="tokens of the measured prefill forward (default: %(default)s)",
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="timed forwards per mode (default: %(default)s)"
    )
    p.add_argument("--no-accelerate", action="store_true", help="skip accelerate's disk offload")
    p.add_argument("--work-dir", type=Path, help="directory for the ssd tier and offload files")
    p.add_argument(
        "--cxl-gb-per-s",
        type=float,
        help="emulated cxl bandwidth (default: measured memcpy x 1/10)",
    )
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    p.set_defaults(handler=_weights_bench)


def print_table(summary: dict[str, Any]) -> None:
    """Print the per-mode table and the headline figures of a weights-bench summary."""
    print(
        f"tier {summary['tier']} ({summary['tier_backend']}), window {summary['window_layers']} "
        f"layers, prompt {summary['prompt_tokens']} tokens, {summary['repeats']} repeats"
    )
    print(f"{'mode':16s} {'p50 s':>8s} {'p99 s':>8s} {'tok/s':>8s} {'stream speedup':>15s}  equal")
    keys = {
        "resident": "weights_stream_vs_resident",
        "on_demand": "weights_stream_vs_on_demand",
        "accelerate": "weights_stream_vs_accelerate",
        "accelerate_cold": "weights_stream_vs_accelerate_cold",
    }
    for name, mode in summary["modes"].items():
        ratio = summary.get(keys.get(name, ""))
        shown = "" if ratio is None else f"{ratio:.3f}x"
        print(
            f"{name:16s} {mode['forward_s_p50']:8.3f} {mode['forward_s_p99']:8.3f} "
            f"{mode['tokens_per_s']:8.1f} {shown:>15s}  {mode['logits_equal_resident']}"
        )
    mib = 1 << 20
    print(
        f"resident layer weights, peak: {summary['resident_weight_bytes_peak'] / mib:.1f} MiB "
        f"(window {summary['window_weight_bytes'] / mib:.1f} MiB, all layers "
        f"{summary['all_layer_weight_bytes'] / mib:.1f} MiB; embeddings/head always resident "
        f"{summary['pinned_weight_bytes'] / mib:.1f} MiB)"
    )
    print(
        f"streaming fetch {summary['stream_fetch_s_per_forward']:.3f} s/forward "
        f"({summary['stream_fetch_cpu_s_per_forward']:.3f} s of it CPU), waited "
        f"{summary['stream_wait_s_per_forward']:.3f} s (hidden "
        f"{summary['stream_io_hidden_fraction']:.1%}); accelerate: {summary['accelerate']}"
    )


def _weights_bench(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from llmsys.tiermem.tiers import parse_tier_kind
    from llmsys.tiermem.weights_bench import WeightsBenchOptions, run_weights_bench

    options = WeightsBenchOptions(
        tier=parse_tier_kind(args.tier),
        window_layers=args.window,
        prompt_tokens=args.prompt_tokens,
        repeats=args.repeats,
        accelerate=not args.no_accelerate,
        work_dir=args.work_dir,
        cxl_bandwidth_bytes_per_s=None if args.cxl_gb_per_s is None else args.cxl_gb_per_s * 1e9,
    )
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("weights-bench rounds", total=options.repeats + 1)

        def progress(label: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        summary = run_weights_bench(options, progress)
    print_table(summary)
    if args.json:
        print(json.dumps(summary, default=str))
    return 0
