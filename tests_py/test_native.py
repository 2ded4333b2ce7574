"""The native extension: what it reports, and an actionable error when it is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import empas
from empas import _native


def test_build_info():
    info = empas.build_info()
    assert info["version"] == empas.__version__
    assert isinstance(info["openmp"], bool) and isinstance(info["cuda"], bool)
    assert info["max_threads"] >= 1


def test_missing_native_build_is_actionable(monkeypatch):
    calls = []
    real_import = _native.importlib.import_module

    def fail(name, *args):
        if name != "empas._core":
            return real_import(name, *args)  # importlib is global: leave the rest alone
        calls.append(name)
        raise ImportError("libfoo.so: cannot open shared object file")

    monkeypatch.setattr(_native, "_core", None)
    monkeypatch.setattr(_native, "_error", None)
    monkeypatch.setattr(_native.importlib, "import_module", fail)
    with pytest.raises(empas.NativeBuildError) as info:
        _native.core()
    msg = str(info.value)
    assert "empas._core" in msg
    assert "libfoo.so: cannot open shared object file" in msg  # the real cause
    assert "pip install --no-build-isolation ." in msg  # what to do
    assert isinstance(info.value.__cause__, ImportError)
    assert calls == ["empas._core"]
    # The failure is remembered, and every entry point reports it the same way.
    with pytest.raises(ImportError, match="could not be loaded"):  # also an ImportError
        empas.build_info()
    with pytest.raises(empas.NativeBuildError, match="libfoo.so"):
        empas.load_profile("example:tinyllama")
    with pytest.raises(empas.NativeBuildError, match="libfoo.so"):
        empas.synthetic_profile(3)
    assert calls == ["empas._core"]


def test_native_cache_is_restored_after_the_simulation(monkeypatch):
    """Self-contained (no reliance on test order): simulate the failure, undo it,
    and the real module is back and used."""
    loaded = _native.core()
    with monkeypatch.context() as m:
        m.setattr(_native, "_core", None)
        m.setattr(_native, "_error", None)
        m.setattr(
            _native.importlib,
            "import_module",
            lambda name, *a: (_ for _ in ()).throw(ImportError("simulated")),
        )
        with pytest.raises(empas.NativeBuildError, match="simulated"):
            _native.core()
    assert _native._core is loaded and _native._error is None
    assert _native.core() is loaded
    assert empas.load_profile("example:tinyllama").n_units == 22


def test_import_empas_survives_a_missing_extension():
    """A fresh interpreter where empas._core cannot be imported at all."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(empas.__file__).resolve().parent.parent)
    code = (
        "import sys; sys.modules['empas._core'] = None\n"
        "import empas\n"
        "try:\n"
        "    empas.load_profile('example:tinyllama')\n"
        "except empas.NativeBuildError as e:\n"
        "    print('NativeBuildError:', e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("NativeBuildError: the EMPAS native extension")
    assert "pip install" in done.stdout
