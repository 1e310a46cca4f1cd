"""Mann-Kendall S, Var S and log p against pymannkendall and the O(n^2) definition."""

import math

import numpy as np
import pymannkendall as pmk
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmsys.aging import Alternative, SeriesError, mann_kendall, mann_kendall_s
from llmsys.aging.inversions import count_inversions, mk_s_batch
from llmsys.aging.reference import mann_kendall_s_reference


@pytest.mark.parametrize("n", [10, 37, 200, 1000])
def test_matches_pymannkendall_on_tied_series(n: int) -> None:
    rng = np.random.default_rng(n)
    y = rng.integers(0, 6, n).astype(float)  # many ties
    ref = pmk.original_test(y)
    got = mann_kendall(y, Alternative.TWO_SIDED)
    assert got.s == pytest.approx(ref.s)
    assert got.var_s == pytest.approx(ref.var_s)
    assert got.z == pytest.approx(ref.z)
    assert got.p_value == pytest.approx(ref.p, rel=1e-9, abs=1e-15)
    assert got.tau == pytest.approx(ref.Tau)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=2, max_size=120))
def test_matches_pairwise_definition(values: list[int]) -> None:
    y = np.array(values, dtype=float)
    s, var_s = mann_kendall_s(y)
    ref_s, ref_var = mann_kendall_s_reference(y)
    assert s == ref_s
    assert var_s == pytest.approx(ref_var)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=80))
def test_tau_bounded_and_flips_on_reversal(values: list[float]) -> None:
    y = np.array(values)
    fwd = mann_kendall(y)
    rev = mann_kendall(y[::-1])
    assert -1.0 <= fwd.tau <= 1.0
    assert rev.s == -fwd.s


def test_log10_p_is_finite_where_p_underflows() -> None:
    y = np.arange(200_000, dtype=float)  # z ~ 490: p ~ 1e-52000
    res = mann_kendall(y)
    assert res.p_value == 0.0
    assert math.isfinite(res.log10_p)
    assert res.log10_p < -10_000
    assert mann_kendall(y, Alternative.DECREASING).log10_p == pytest.approx(0.0, abs=1e-12)


def test_kernels_count_strict_inversions_and_ties() -> None:
    keys = np.array([3.0, 1.0, 2.0, 2.0, 0.0])
    # pairs with keys[i] > keys[j]: (3,1) (3,2) (3,2) (3,0) (1,0) (2,0) (2,0) = 7; ties: (2,2)
    assert count_inversions(keys) == (7, 1)
    rows = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [1.0, 1.0, 1.0]])
    assert mk_s_batch(rows).tolist() == [3, -3, 0]


def test_rejects_non_finite_input() -> None:
    with pytest.raises(SeriesError, match="NaN"):
        mann_kendall_s([1.0, float("nan"), 2.0])
    with pytest.raises(SeriesError, match="at least 2"):
        mann_kendall_s([1.0])
