"""Lazy access to the compiled parts, with an actionable error when one is
missing or broken. ``import empas`` never fails because of the native build.

Two libraries: ``empas._core`` (pybind11; search engine, no torch) and
``libempas_ops.so`` (the torch ops ``torch.ops.empas.*``, LibTorch adapters over
the C++ kernels), loaded into torch on first use by :func:`load_ops`."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

from .errors import NativeBuildError

OPS_FILE = "libempas_ops.so"
_REINSTALL = (
    "Reinstall from the source tree with `pip install --no-build-isolation .` "
    "(see README: 'Install'), using the same Python that imports empas"
)

_core: ModuleType | None = None
_error: BaseException | None = None
_ops_loaded = False
_ops_error: BaseException | None = None


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
        f"the EMPAS native extension (empas._core) could not be loaded: {_error}. {_REINSTALL}."
    ) from _error


def ops_library_path() -> Path | None:
    """Where the torch ops library is (beside the package), or None when this
    build has none."""
    p = Path(__file__).with_name(OPS_FILE)
    return p if p.exists() else None


def load_ops():
    """Loads the torch ops library into torch (``torch.ops.empas.fake_quant``,
    ``fake_quant_``, ``build_info``) on first use; returns the torch module.

    Raises NativeBuildError (an ImportError) when torch is missing, the build has
    no ops library (torch was not importable when EMPAS was built), or the
    library does not load (e.g. built against another torch version)."""
    global _ops_loaded, _ops_error
    try:
        import torch
    except ImportError as exc:
        raise NativeBuildError(
            "the EMPAS torch ops need PyTorch, which could not be imported "
            f"({exc}). Install torch, then rebuild EMPAS against it: "
            "`pip install --no-build-isolation .`"
        ) from exc
    if _ops_loaded:
        return torch
    if _ops_error is None:
        path = ops_library_path()
        if path is None:
            raise NativeBuildError(
                f"this EMPAS build has no torch ops library ({OPS_FILE} is not in "
                f"{Path(__file__).parent}): the ops are built only when the Python that "
                f"builds EMPAS can import torch. {_REINSTALL}, with torch installed "
                "(or build with -DEMPAS_TORCH=ON to make a missing torch an error)."
            )
        built = _ops_torch_version()
        running = torch.__version__.split("+")[0]
        if built and built != running:
            raise NativeBuildError(
                f"the EMPAS torch ops ({path}) were built against torch {built}, but "
                f"torch {running} is running. {_REINSTALL}."
            )
        try:
            torch.ops.load_library(str(path))
            _ops_loaded = True
            return torch
        except (OSError, RuntimeError) as exc:  # dlopen failure, duplicate registration
            _ops_error = exc
    raise NativeBuildError(
        f"the EMPAS torch ops library could not be loaded: {_ops_error}. {_REINSTALL}."
    ) from _ops_error


def _ops_torch_version() -> str | None:
    """The torch version the ops were built against, from ``_core`` (None when
    unknown)."""
    try:
        return core().build_info().get("ops_torch_version") or None
    except NativeBuildError:
        return None


def version() -> str:
    """EMPAS's version: the installed distribution's (pyproject.toml is the one place
    it is written; the C++ side reads the same file)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("empas")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        return "0+unknown"


def build_info() -> dict:
    """What the native build contains: version, OpenMP, threads, and the torch
    ops: ``torch_ops`` (the ops library is built and present), ``cuda`` (CUDA
    kernels compiled into it), ``ops_library`` (its path, or None),
    ``ops_loaded`` (already loaded into torch; then also ``cpu_isa``, the SIMD
    path the CPU kernels picked). Never imports torch."""
    info = dict(core().build_info())
    path = ops_library_path()
    info["torch_ops"] = bool(info.get("torch_ops")) and path is not None
    info["cuda"] = bool(info.get("cuda")) and info["torch_ops"]
    info["ops_library"] = str(path) if path is not None else None
    info["ops_loaded"] = _ops_loaded
    if _ops_loaded:
        import torch

        ops_info = json.loads(torch.ops.empas.build_info())
        info["cpu_isa"] = ops_info.get("cpu_isa")
        info["cuda"] = bool(ops_info.get("cuda"))
    return info
