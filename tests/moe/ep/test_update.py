"""The GRPO update on the expert-parallel model equals the single-process update."""

from __future__ import annotations

import uuid

import pytest
from tests.moe.ep.workers import PRELOAD, update_run

from llmsys.moe.ep.dist import DistConfig, run_ranks


@pytest.mark.parametrize("policy", ["foremoe", "static"])
def test_update_matches_single_process(policy: str) -> None:
    cfg = DistConfig(preload=PRELOAD, world_size=2, timeout_s=60.0, job_timeout_s=240.0)
    results = run_ranks(update_run, cfg, policy, uuid.uuid4().hex)
    for r in results:
        assert r["err"] < 1e-10
        assert r["moved"] > 1e-3  # the update really changed the weights
    if policy == "foremoe":
        assert results[0]["moves"] > 0  # replicas were placed and moved
    else:
        assert results[0]["moves"] == 0
