"""Hardware profiles: the shipped ones load and cite sources; bad files are refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmsys.core.errors import ConfigError
from llmsys.tiermem.sim import (
    HardwareProfile,
    ProfileError,
    load_profile,
    profile_names,
    profile_to_toml,
)
from llmsys.tiermem.sim.profile import PROFILE_DIR
from llmsys.tiermem.tiers.base import TierKind

H100 = load_profile("h100-cmm")


def test_h100_profile_states_the_issue_figures_with_sources() -> None:
    assert "h100-cmm" in profile_names()
    assert H100.kv_bytes_per_token == 128 * 1024
    cxl = H100.tiers[TierKind.CXL]
    assert 25e9 <= cxl.read_bytes_per_s <= 40e9
    assert 100e-9 <= cxl.latency_s <= 1e-6
    assert 12e9 <= H100.tiers[TierKind.SSD].read_bytes_per_s <= 14e9
    # every figure carries its source
    scalars = {
        f.name
        for f in dataclasses.fields(HardwareProfile)
        if f.name not in ("name", "description", "tiers", "sources", "calibration")
    }
    assert scalars | {k.value for k in H100.tiers} <= set(H100.sources)
    # a hit is 10-20x cheaper than recompute in this regime (the design figure)
    tokens = 512
    recompute = H100.prefill_s(15_360, 15_360 - tokens)
    load = H100.tiers[TierKind.DRAM].read_s(H100.block_bytes)
    assert 8 < recompute / load < 25


def test_profile_round_trips_through_toml(tmp_path: Path) -> None:
    path = tmp_path / "copy.toml"
    path.write_text(profile_to_toml(H100, header="copy"), encoding="utf-8")
    assert load_profile(path) == H100


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    return path


BASE = (PROFILE_DIR / "h100-cmm.toml").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.replace("block_tokens = 512", "block_tokens = 512\nwarp_factor = 9"),
            "unknown",
        ),
        (lambda t: t.replace("decode_token_s = 0.00015\n", ""), "missing"),
        (
            lambda t: t.replace("prefill_token_s = 4.06e-05", "prefill_token_s = -1.0"),
            "prefill_token_s",
        ),
        (lambda t: t.replace("block_tokens = 512", "block_tokens = 0"), "block_tokens"),
        (lambda t: t.replace("[tiers.ssd]", "[tiers.tape]"), "tape"),
        (lambda t: t.replace("read_bytes_per_s = 14e9", "read_bytes_per_s = 0.0"), "ssd"),
        (lambda t: t.replace("async_saves = true", "async_saves = 3"), "async_saves"),
        (lambda t: t + "\nthis is not toml [[", "cannot read"),
    ],
)
def test_bad_profiles_are_refused(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProfileError, match=message) as info:
        load_profile(_write(tmp_path, edit(BASE)))
    assert isinstance(info.value, ConfigError)  # the CLI maps it to exit 2


def test_unknown_profile_name_lists_the_known_ones() -> None:
    with pytest.raises(ProfileError, match="h100-cmm"):
        load_profile("no-such-machine")


@given(
    prompt=st.integers(1, 40_000),
    cached_a=st.integers(0, 40_000),
    cached_b=st.integers(0, 40_000),
)
def test_prefill_time_falls_as_more_is_cached(prompt: int, cached_a: int, cached_b: int) -> None:
    lo, hi = sorted((cached_a, cached_b))
    lo = H100.usable_cached_tokens(lo, prompt)
    hi = H100.usable_cached_tokens(hi, prompt)
    assert lo <= hi < prompt and hi % H100.chunk_tokens == 0
    assert H100.prefill_s(prompt, hi) <= H100.prefill_s(prompt, lo) + 1e-12


def test_prefill_and_decode_time_golden_values() -> None:
    p = dataclasses.replace(
        H100,
        block_tokens=4,
        prefill_chunk_blocks=2,
        prefill_pass_s=1.0,
        prefill_token_s=0.1,
        prefill_pair_s=0.01,
        decode_token_s=0.5,
        decode_context_token_s=0.001,
    )
    # 20 tokens, 8 cached: passes [8,16) and [16,20) = 2; new 12; pairs 12*8 + 12*13/2 = 174
    assert p.prefill_s(20, 8) == pytest.approx(2 * 1.0 + 12 * 0.1 + 174 * 0.01)
    # 3 new tokens: 2 decode steps at contexts 21 and 22
    assert p.decode_s(20, 3) == pytest.approx(2 * 0.5 + (21 + 22) * 0.001)
    assert p.usable_cached_tokens(20, 20) == 16
    assert p.usable_cached_tokens(7, 20) == 0
