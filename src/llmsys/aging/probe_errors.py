"""Errors raised by the aging probes of :mod:`llmsys.aging` (issue 12).

::

    llmsys.core.errors.ConfigError (ValueError)
    └── ProbeConfigError     a deployment, injector, monitor or load option is out of range
    llmsys.core.errors.ResourceError (RuntimeError)
    └── DeploymentError      a deployment process failed to start, died, or never became ready
"""

from __future__ import annotations

from llmsys.core.errors import ConfigError, ResourceError


class ProbeConfigError(ConfigError):
    """A probe option (port, rate, interval, leak size, unknown key, ...) is out of range."""


class DeploymentError(ResourceError):
    """A deployment process failed to start, exited early, or did not answer ``/health``."""
