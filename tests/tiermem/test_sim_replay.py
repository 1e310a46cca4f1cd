"""The replay drives the real store, policies and foresight planner, deterministically."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from llmsys.core.errors import InputError
from llmsys.tiermem.serving.compare import CacheConfig
from llmsys.tiermem.serving.foresight import ForesightPlanner
from llmsys.tiermem.sim import (
    LaneClock,
    ProfileError,
    ReplayOptions,
    footprint_bytes,
    load_profile,
    replay,
    requests_from_trace,
    simulate,
)
from llmsys.tiermem.store import TieredStore
from llmsys.tiermem.tiers.base import TierKind

TRACE = Path("/work/shared/data/mooncake_synthetic_trace.jsonl")
H100 = load_profile("h100-cmm")


def _trace(tmp_path: Path, sessions: int = 6, turns: int = 4) -> Path:
    """Chat-like trace: each session's turn extends its previous prompt by two hash blocks;
    sessions are interleaved so a session returns after all others (long reuse distance)."""
    lines = []
    prompts = {s: [1000 * s + i for i in range(4)] for s in range(sessions)}
    for _ in range(turns):
        for s in range(sessions):
            prompts[s] = prompts[s] + [1000 * s + len(prompts[s]) + j for j in range(2)]
            ids = [0, 1] + prompts[s]  # a shared two-block system prompt
            lines.append(
                json.dumps(
                    {
                        "timestamp": 0,
                        "input_length": 512 * len(ids) - 100,
                        "output_length": 20,
                        "hash_ids": ids,
                    }
                )
            )
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_replay_is_deterministic(tmp_path: Path) -> None:
    reqs = requests_from_trace(_trace(tmp_path), H100)
    f = footprint_bytes(reqs)
    a = replay(reqs, H100, CacheConfig.ITME, ratio=4, footprint_bytes=f)
    b = replay(reqs, H100, CacheConfig.ITME, ratio=4, footprint_bytes=f)
    assert a.results == b.results
    assert a.wall_s == b.wall_s
    assert a.store_stats == b.store_stats


def test_replay_moves_the_real_store_counters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, TierKind]] = []
    real_prefetch = TieredStore.prefetch

    def spy(self, keys, target=TierKind.DRAM, deadline_s=None):  # type: ignore[no-untyped-def]
        calls.append((len(keys), target))
        return real_prefetch(self, keys, target, deadline_s)

    monkeypatch.setattr(TieredStore, "prefetch", spy)
    reqs = requests_from_trace(_trace(tmp_path), H100)
    f = footprint_bytes(reqs)
    run = replay(reqs, H100, CacheConfig.ITME, ratio=4, footprint_bytes=f)
    stats = run.store_stats
    assert stats is not None and run.foresight is not None
    # dram is a quarter of the footprint: the store demoted blocks to cxl and promoted hits
    assert stats.demotions > 0 and stats.promotions + stats.prefetched > 0
    assert stats.tiers[0].kind is TierKind.DRAM and stats.tiers[0].bytes_in > 0
    # foresight went through store.prefetch, both stages, and the planner counted its moves
    assert {t for _, t in calls} == {TierKind.CXL, TierKind.DRAM}
    assert run.foresight.moved_blocks == stats.prefetched
    # blocks served from cxl/ssd exist only because the store put them there
    tiers = {t for r in run.results for t in r.hit_tiers}
    assert TierKind.DRAM in tiers


def test_configurations_bracket_each_other(tmp_path: Path) -> None:
    reqs = requests_from_trace(_trace(tmp_path), H100)
    comp = simulate(reqs, H100, ratios=(1, 4))
    thr = comp.throughput()
    assert all(not r.hit_tiers for r in comp.runs["recompute"]["-"].results)
    # unbounded dram is the ceiling and recompute the floor of every configuration
    for cfg in ("cpu-offload", "dram-ssd", "itme"):
        for ratio in ("1", "4"):
            assert thr["recompute"]["-"] <= thr[cfg][ratio] * 1.0001
            assert thr[cfg][ratio] <= thr["unbounded"]["-"] * 1.0001
    # at ratio 1 nothing is evicted: every cached configuration equals unbounded
    assert thr["cpu-offload"]["1"] == pytest.approx(thr["unbounded"]["-"])
    # cpu-offload at ratio 4 drops blocks the others keep
    assert comp.runs["cpu-offload"]["4"].store_stats.dropped > 0  # type: ignore[union-attr]
    summary = comp.summary(4)
    assert summary["simulated"] is True and summary["profile"] == "h100-cmm"
    assert summary["speedup_itme_vs_cpu_offload"] == pytest.approx(
        thr["itme"]["4"] / thr["cpu-offload"]["4"]
    )


def test_cxl_factor_zero_means_no_cxl_tier(tmp_path: Path) -> None:
    reqs = requests_from_trace(_trace(tmp_path), H100)
    f = footprint_bytes(reqs)
    run = replay(
        reqs,
        H100,
        CacheConfig.ITME,
        ratio=4,
        footprint_bytes=f,
        options=ReplayOptions(cxl_factor=0),
    )
    assert run.store_stats is not None
    assert [t.kind for t in run.store_stats.tiers] == [TierKind.DRAM, TierKind.SSD]


def test_missing_tier_link_and_bad_options_are_refused(tmp_path: Path) -> None:
    reqs = requests_from_trace(_trace(tmp_path), H100)
    no_cxl = dataclasses.replace(
        H100, tiers={k: v for k, v in H100.tiers.items() if k is not TierKind.CXL}
    )
    with pytest.raises(ProfileError, match="cxl"):
        replay(reqs, no_cxl, CacheConfig.ITME, ratio=2, footprint_bytes=footprint_bytes(reqs))
    with pytest.raises(ProfileError):
        ReplayOptions(lookahead=0)
    with pytest.raises(ProfileError):
        simulate(reqs, H100, ratios=(0,))


def test_lane_clock_keeps_lanes_apart() -> None:
    clock = LaneClock()
    clock.sleep(2.0)
    with clock.lane("stage1", start_s=1.0):
        assert clock.now() == 1.0
        clock.sleep(5.0)
    assert clock.now() == 2.0 and clock.time_of("stage1") == 6.0
    with clock.lane("stage1", start_s=3.0):  # a lane never runs backwards
        assert clock.now() == 6.0


def test_planner_cuts_prefix_order_chunks_and_pins(tmp_path: Path) -> None:
    reqs = requests_from_trace(_trace(tmp_path), H100)
    f = footprint_bytes(reqs)
    run = replay(reqs[:6], H100, CacheConfig.CPU_OFFLOAD, ratio=1, footprint_bytes=f)
    assert run.store_stats is not None
    from llmsys.tiermem.prefetch import InlineExecutor
    from llmsys.tiermem.sim.replay import _store_tiers
    from llmsys.tiermem.store import StoreConfig

    tiers = _store_tiers(CacheConfig.ITME, H100, f, 4, 2.0)
    store = TieredStore(
        reqs[0].namespace,
        StoreConfig(tiers=tiers, metadata_only=True),
        clock=LaneClock(),
        executor=InlineExecutor(),
    )
    for key in reqs[0].keys:  # store request 0's blocks
        h = store.prepare_store([key])
        for k in h.keys:
            store.write(h, k, None)
        store.complete_store(h)
    planner = ForesightPlanner(store, lookahead=1, chunk_blocks=2)
    jobs = planner.plan([("r0", reqs[0].keys)])
    assert [j.keys for j in jobs] == [
        reqs[0].keys[i : i + 2] for i in range(0, len(reqs[0].keys), 2)
    ]
    assert all(j.stage == 0 for j in jobs)
    follow = planner.run(jobs[0])
    assert follow is not None and follow.stage == 1 and follow.keys == jobs[0].keys
    assert planner.run(follow) is None
    pins = planner.take("r0")
    assert pins is not None and pins.keys == reqs[0].keys[: len(pins.keys)]
    store.complete_load(pins)
    store.close()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "trace.jsonl:1"),
        ('{"input_length": 5, "output_length": 1}', "hash_ids"),
        ('{"input_length": 5, "output_length": 1, "hash_ids": []}', "empty"),
        ('{"input_length": 5, "output_length": 1, "hash_ids": [-3]}', "2\\^32"),
    ],
)
def test_bad_trace_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=message):
        requests_from_trace(path, H100)


def test_trace_keys_follow_the_hash_chain(tmp_path: Path) -> None:
    reqs = requests_from_trace(_trace(tmp_path, sessions=2, turns=2), H100)
    # turn 2 of a session extends turn 1: its keys start with turn 1's keys
    s0_t0, s0_t1 = reqs[0], reqs[2]
    assert s0_t1.keys[: len(s0_t0.keys)] == s0_t0.keys
    # the shared system prompt gives every request the same first two keys
    assert len({r.keys[:2] for r in reqs}) == 1
    assert len({r.keys[2] for r in reqs}) == 2


@pytest.mark.skipif(not TRACE.is_file(), reason="shipped trace not present")
def test_shipped_trace_slice_reads_like_the_real_reader() -> None:
    from llmsys.tiermem.serving import read_mooncake_trace

    sim = requests_from_trace(TRACE, load_profile("h100-cmm"), requests=20)
    real = read_mooncake_trace(TRACE, tokens_per_hash=512, requests=20)
    assert [r.prompt_tokens for r in sim] == [len(r.prompt_ids) for r in real]
    assert [r.output_tokens for r in sim] == [r.max_new_tokens for r in real]
