"""Family corrections in log10 p space against statsmodels' multipletests."""

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from llmsys.aging import Correction, StatsConfigError, adjust_log10_p, significant_after

_SM = {Correction.BH: "fdr_bh", Correction.BY: "fdr_by", Correction.HOLM: "holm"}


@pytest.mark.parametrize("correction", list(_SM))
def test_matches_statsmodels(correction: Correction) -> None:
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(0, 1, 40), rng.uniform(0, 1e-4, 10)])
    reject, p_adj, _, _ = multipletests(p, alpha=0.05, method=_SM[correction])
    got = adjust_log10_p(np.log10(p), correction)
    assert 10**got == pytest.approx(p_adj, rel=1e-9)
    assert significant_after(got, 0.05).tolist() == reject.tolist()


def test_ranks_survive_float_underflow() -> None:
    # p ~ 1e-78000 and 1e-500 are both 0.0 in float64; in log space they still rank
    log10_p = np.array([-78000.0, -500.0, -1.0, -0.1])
    adj = adjust_log10_p(log10_p, Correction.BH)
    assert adj[0] < adj[1] < adj[2] <= adj[3] <= 0.0
    assert significant_after(adj, 0.05).tolist() == [True, True, False, False]
    assert adjust_log10_p(log10_p, Correction.NONE).tolist() == log10_p.tolist()


def test_rejects_bad_inputs() -> None:
    with pytest.raises(StatsConfigError):
        significant_after([-1.0], 1.5)
    with pytest.raises(ValueError):
        adjust_log10_p([0.5], Correction.BH)
