"""The one exception tree of llmsys.

::

    LlmsysError
    ├── ConfigError            a configuration value or key is invalid (also a ValueError)
    ├── InputError             user data (a file, an array, a trace) is malformed (a ValueError)
    ├── ModelUnavailableError  the bundled model or a package it needs is missing
    └── ResourceError          a machine resource (a server binary, a device) is unusable

Subsystems derive their own errors from these, so ``except LlmsysError`` catches everything
llmsys raises on purpose, and ``except ValueError`` still catches bad arguments.
"""

from __future__ import annotations


class LlmsysError(Exception):
    """Base class of every error llmsys raises on purpose."""


class ConfigError(LlmsysError, ValueError):
    """A configuration key is unknown or a value is out of its documented range."""


class InputError(LlmsysError, ValueError):
    """User-supplied data (a file, an array, a trace) is malformed.

    The message names where the problem is (file, row, field) and what it is.
    """


class ModelUnavailableError(LlmsysError, RuntimeError):
    """The bundled model, or a package needed to load it, is not installed."""


class ResourceError(LlmsysError, RuntimeError):
    """A machine resource the caller asked for (a server binary, a device, a port) is unusable."""
