"""The executor with the transfer engine reproduces single-process training, over both paths."""

from __future__ import annotations

import uuid

import pytest
from tests.moe.ep.workers import PRELOAD, executor_run

from llmsys.moe.ep.dist import DistConfig, run_ranks


@pytest.mark.parametrize(
    ("world", "link"), [(2, "direct"), (2, "host"), (2, "mixed"), (4, "mixed")]
)
def test_two_minibatches_match_reference(world: int, link: str) -> None:
    results = run_ranks(
        executor_run,
        DistConfig(preload=PRELOAD, world_size=world, timeout_s=60.0, job_timeout_s=240.0),
        link,
        uuid.uuid4().hex,
    )
    paths = results[0]["paths"]
    assert all(r["paths"] == paths for r in results)  # every rank planned the same moves
    assert sum(paths.values()) > 0  # replicas were actually moved
    if link == "direct":
        assert paths["host"] == 0
    elif link == "host":
        assert paths["direct"] == 0
    else:  # equal models: queues fill and spill to the other path
        assert paths["direct"] > 0 and paths["host"] > 0
    for r in results:
        assert r["err"] < 1e-10
