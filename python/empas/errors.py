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


class ProfileError(FormatError):
    """Profiling cannot proceed: bad model, data, units or a non-finite loss."""


class DeviceMemoryError(ProfileError):
    """The device ran out of memory while profiling. ``device``: where;
    ``needed_bytes``: what :func:`empas.profile_cost` estimates one rank holds for
    this model and these settings; ``capacity_bytes``: the device's memory (None
    when unknown); ``phase``: the baseline or the experiment that failed."""

    def __init__(
        self,
        message: str,
        device: str = "",
        needed_bytes: int | None = None,
        capacity_bytes: int | None = None,
        phase: str = "",
    ):
        super().__init__(message)
        self.device = device
        self.needed_bytes = needed_bytes
        self.capacity_bytes = capacity_bytes
        self.phase = phase


class StaleCheckpointError(FormatError):
    """A profile checkpoint written for another model, text or settings."""


class PlanMismatchError(FormatError):
    """The plan was made for a different model (unknown modules, other sizes)."""


class CheckpointError(FormatError):
    """A packed checkpoint is missing, corrupt or inconsistent."""
