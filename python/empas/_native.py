"""Lazy access to the compiled extension, with an actionable error when it is
missing or broken. ``import empas`` never fails because of the native build."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import NativeBuildError

_core: ModuleType | None = None
_error: BaseException | None = None


def core() -> ModuleType:
    """Returns ``empas._core``, importing it on first use."""
    global _core, _error
    if _core is not None:
        return _core
    if _error is None:
        try:
            _core = importlib.import_module("empas._core")
            return _core
        except ImportError as exc:  # missing file, ABI mismatch, missing symbol
            _error = exc
    raise NativeBuildError(
        "the EMPAS native extension (empas._core) could not be loaded: "
        f"{_error}. Reinstall from the source tree with "
        "`pip install --no-build-isolation .` (see README: 'Install'), "
        "using the same Python that imports empas."
    ) from _error


def build_info() -> dict:
    """What the native build contains: version, OpenMP, CUDA, torch ops."""
    return dict(core().build_info())
