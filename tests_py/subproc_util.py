"""The environment for tests that run EMPAS in a child process."""

from __future__ import annotations

import os
from pathlib import Path

import empas


def child_env() -> dict[str, str]:
    """os.environ with PYTHONPATH led by the empas this test imports (installed, or
    a source tree with its .so): a fresh clone's python/ has no built extension."""
    env = dict(os.environ)
    env["PYTHONPATH"] = (
        str(Path(empas.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    )
    return env
