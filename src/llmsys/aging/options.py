"""The enum options of the trend statistics, in a module of their own.

They are what a command line or a config file chooses from, so they import nothing heavy:
``llmsys aging --help`` lists them without loading scipy. :mod:`llmsys.aging.mann_kendall`,
:mod:`llmsys.aging.trend`, the campaign config and the CLI import them from here.
"""

from __future__ import annotations

from enum import Enum


class Alternative(Enum):
    """Direction of the trend alternative hypothesis."""

    INCREASING = "increasing"
    DECREASING = "decreasing"
    TWO_SIDED = "two-sided"


class Detrend(Enum):
    """What the sieve bootstrap removes before it fits the noise model.

    ``LINE`` (default): the Sen line - validated (size and coverage tables in
    docs/benchmarks.md). Weak spot: a bounded cache that fills early and then stays flat
    leaves a bend in the residuals that the AR fit reads as persistent noise, so the test
    can miss it (a cache full after 30 % of a 400 s run: p around 0.2).
    ``SHAPE``: the BIC-best growth shape - line, saturating curve, line-then-flat (a
    bounded cache) or step (:func:`~llmsys.aging.growth.shape_residuals`), with the bias
    correction calibrated on the same detrending; finds those caches (p < 1e-3 in the
    tests) but over-rejects on strongly autocorrelated noise (false-positive rate 0.095 at
    AR(1) phi = 0.99, n = 1e4; 0.075 at n = 1e3; 400 replicates each, with
    ``correct_test_variance``), so it is an experimental option, not the default.
    """

    LINE = "line"
    SHAPE = "shape"


class TrendMethod(Enum):
    """How the significance of S accounts for autocorrelation."""

    ORIGINAL = "original"
    HAMED_RAO = "hamed-rao"
    SIEVE_BOOTSTRAP = "sieve-bootstrap"
