"""A rank that dies, hangs or raises ends the run within the timeout, named in the error."""

from __future__ import annotations

import time

import pytest
from tests.moe.ep.workers import PRELOAD, fail_on, hang_in_layer

from llmsys.core.errors import ConfigError
from llmsys.moe.ep.dist import DistConfig, RankFailedError, RankTimeoutError, run_ranks

TIMEOUT_S = 3.0


def test_healthy_group_returns_results_in_rank_order() -> None:
    assert run_ranks(
        fail_on, DistConfig(preload=PRELOAD, world_size=3, timeout_s=TIMEOUT_S), 99, "none"
    ) == [3, 3, 3]


def test_dead_rank_is_named_at_once() -> None:
    t0 = time.monotonic()
    with pytest.raises(RankFailedError, match=r"rank 2 \(exit code 3\)") as info:
        run_ranks(fail_on, DistConfig(preload=PRELOAD, world_size=3, timeout_s=30.0), 2, "die")
    assert info.value.ranks == (2,)
    assert not isinstance(info.value, RankTimeoutError)
    assert time.monotonic() - t0 < 25.0  # did not wait for the 30 s collective timeout


def test_hung_rank_is_named_within_twice_the_timeout() -> None:
    t0 = time.monotonic()
    with pytest.raises(RankTimeoutError, match="rank 1 hung") as info:
        run_ranks(
            fail_on, DistConfig(preload=PRELOAD, world_size=2, timeout_s=TIMEOUT_S), 1, "hang"
        )
    assert info.value.ranks == (1,)
    # peers time out in the collective after TIMEOUT_S, the parent names the silent rank
    # TIMEOUT_S later; allow for process start on a loaded machine
    assert time.monotonic() - t0 < 2 * TIMEOUT_S + 15.0


def test_hang_with_no_collective_is_caught_by_the_job_timeout() -> None:
    cfg = DistConfig(preload=PRELOAD, world_size=1, timeout_s=30.0, job_timeout_s=4.0)
    with pytest.raises(RankTimeoutError, match="rank 0 hung: job exceeded 4 s") as info:
        run_ranks(fail_on, cfg, 0, "hang")
    assert info.value.ranks == (0,)


def test_raising_rank_is_named_first() -> None:
    with pytest.raises(RankFailedError, match="rank 0 failed: ValueError: boom") as info:
        run_ranks(
            fail_on, DistConfig(preload=PRELOAD, world_size=2, timeout_s=TIMEOUT_S), 0, "raise"
        )
    assert info.value.ranks[0] == 0


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError):
        DistConfig(preload=PRELOAD, world_size=0)
    with pytest.raises(ConfigError):
        DistConfig(preload=PRELOAD, world_size=2, timeout_s=0.0)


def test_rank_hanging_inside_the_moe_layer_is_named() -> None:
    # rank 0 waits in the dispatch all-to-all of micro-step 2, times out after TIMEOUT_S
    # (gloo), and the parent names the rank that never reported
    t0 = time.monotonic()
    with pytest.raises(RankTimeoutError, match="rank 1 hung") as info:
        run_ranks(hang_in_layer, DistConfig(preload=PRELOAD, world_size=2, timeout_s=TIMEOUT_S), 1)
    assert info.value.ranks == (1,)
    assert "rank 0" in str(info.value)  # the peer's collective timeout is reported too
    assert time.monotonic() - t0 < 2 * TIMEOUT_S + 15.0
