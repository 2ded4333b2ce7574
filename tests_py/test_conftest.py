"""The suite's own opt-in markers: slow needs --run-slow; gpu needs --run-gpu and CUDA."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import empas

HERE = Path(__file__).resolve().parent

TESTS = """
import os
import pytest

def test_plain():
    assert os.environ["MPLBACKEND"] == "Agg"

@pytest.mark.slow
def test_slow():
    pass

@pytest.mark.gpu
def test_gpu():
    pass

def test_fixtures(tinyllama, original_profile_path, original_plan_paths):
    assert tinyllama.n_units == 22 and original_profile_path.name.endswith(".json")
    assert sorted(original_plan_paths) == ["balanced", "max_accuracy", "max_compression"]
"""

FAKE_TORCH = """
class cuda:
    @staticmethod
    def is_available():
        return {available}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    shutil.copy(HERE / "conftest.py", root / "conftest.py")
    shutil.copytree(HERE / "data", root / "data")
    (root / "test_markers.py").write_text(TESTS)
    (root / "pytest.ini").write_text(
        "[pytest]\naddopts = --strict-markers -p no:cacheprovider\nfilterwarnings = error\n"
        "markers =\n    slow: slow\n    gpu: gpu\n"
    )
    return root


def _run(project, *args, torch=None):
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # the conftest sets it
    paths = [str(Path(empas.__file__).resolve().parent.parent)]
    if torch is not None:  # a stand-in torch that does or does not see a GPU
        fake = project / f"fake_torch_{torch}"
        (fake / "torch").mkdir(parents=True, exist_ok=True)
        (fake / "torch" / "__init__.py").write_text(FAKE_TORCH.format(available=torch))
        paths.insert(0, str(fake))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    counts = dict((k, int(n)) for n, k in re.findall(r"(\d+) (passed|skipped|failed)", done.stdout))
    return done, counts


@pytest.mark.parametrize(
    "args, torch, passed, skipped",
    [
        ((), None, 2, 2),
        (("--run-slow",), None, 3, 1),
        (("--run-gpu",), False, 2, 2),  # no CUDA device: still skipped
        (("--run-gpu",), True, 3, 1),
        (("--run-slow", "--run-gpu"), True, 4, 0),
    ],
)
def test_markers(project, args, torch, passed, skipped):
    done, counts = _run(project, *args, torch=torch)
    assert done.returncode == 0, done.stdout + done.stderr
    assert counts.get("passed", 0) == passed, done.stdout
    assert counts.get("skipped", 0) == skipped, done.stdout
    assert "failed" not in counts
