"""Exceptions raised by EMPAS. All are ``ValueError`` subclasses, so callers that
already catch ``ValueError`` for bad input keep working."""

from __future__ import annotations


class EmpasError(Exception):
    """Base class of EMPAS-specific errors."""


class FormatError(EmpasError, ValueError):
    """A file or object is malformed, of an unsupported version, or does not match."""


class InfeasibleError(EmpasError, ValueError):
    """No plan can satisfy the requested budget."""


class NativeBuildError(EmpasError, ImportError):
    """The compiled extension ``empas._core`` is missing or does not match."""
