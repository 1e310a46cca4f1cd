"""Errors raised by the trend statistics of :mod:`llmsys.aging` (issue 11).

::

    llmsys.core.errors.InputError (ValueError)
    └── SeriesError          an array is not a usable series (shape, NaN, too short, time order)
        └── CsvFormatError   a deployment CSV is malformed (names file, row and problem)
    llmsys.core.errors.ConfigError (ValueError)
    └── StatsConfigError     a statistics option is out of its documented range
"""

from __future__ import annotations

from llmsys.core.errors import ConfigError, InputError


class SeriesError(InputError):
    """An input array is not a usable series: wrong shape, non-finite, too short, bad time order."""


class CsvFormatError(SeriesError):
    """A deployment CSV is malformed; the message names the file, the row and the problem."""


class StatsConfigError(ConfigError):
    """A statistics option (alpha, method, replicate count, ...) is outside its documented range."""
