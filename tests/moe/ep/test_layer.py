"""The expert-parallel layer equals the single-process layer, on 2 and 4 gloo ranks (float64).

One spawned group per world size runs every scenario (see ``workers.scenarios``): a static
placement; random placements with replicas (two replicas of one expert on rank 0, an
expert with no tokens, replicas of a rank's own home expert); the ForeMoE planner's
placement; a random placement whose token counts the layer all-gathers itself (no
replayed counts given); and a mini-batch of four micro-steps under a static plan and under
a plan that changes every micro-step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from tests.moe.ep.workers import PRELOAD, scenarios

from llmsys.moe.ep.dist import DistConfig, run_ranks

REF_TOL = 1e-10
PLAN_TOL = 1e-12


@pytest.fixture(scope="module", params=[2, 4])
def results(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return run_ranks(
        scenarios,
        DistConfig(preload=PRELOAD, world_size=request.param, timeout_s=60.0, job_timeout_s=240.0),
    )


@pytest.mark.parametrize(
    "scenario", ["static", "replicas", "foremoe", "gathered", "mb_static", "mb_changing"]
)
def test_outputs_loss_and_gradients_match_reference(
    results: list[dict[str, Any]], scenario: str
) -> None:
    for rank, res in enumerate(results):
        err = res[scenario]["err"]
        assert set(err) == {"y", "loss", "x_grad", "w1_grad", "w3_grad", "w2_grad", "router_grad"}
        for name, value in err.items():
            assert value < REF_TOL, (rank, scenario, name, value)


def test_minibatch_gradients_agree_between_static_and_changing_plans(
    results: list[dict[str, Any]],
) -> None:
    # not bitwise: the reduction order differs (replica grads are summed at home after the
    # home's own accumulation), so the bar is 1e-12 in float64
    for res in results:
        a, b = res["mb_static"]["grads"], res["mb_changing"]["grads"]
        for name in ("w1", "w3", "w2", "router"):
            assert a[name].shape == b[name].shape
            assert np.abs(a[name] - b[name]).max() < PLAN_TOL, name
            assert np.abs(a[name]).max() > 0.0  # something was actually accumulated
