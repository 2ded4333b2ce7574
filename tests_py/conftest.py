"""Shared fixtures and the opt-in markers: slow (--run-slow) and gpu (--run-gpu)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

import empas  # noqa: E402

DATA = Path(__file__).parent / "data"
ORIGINAL_PLANS = DATA / "empas_tinyllama"
ORIGINAL_PROFILE = Path(empas.__file__).parent / "data" / "tinyllama_sensitivity.json"


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow")
    parser.addoption("--run-gpu", action="store_true", help="run tests marked gpu (needs CUDA)")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--run-slow")
    run_gpu = config.getoption("--run-gpu") and _cuda_available()
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: pass --run-slow"))
        if "gpu" in item.keywords and not run_gpu:
            item.add_marker(pytest.mark.skip(reason="gpu: pass --run-gpu on a CUDA machine"))


@pytest.fixture(scope="session")
def tinyllama():
    return empas.load_profile("example:tinyllama")


@pytest.fixture(scope="session")
def exact_tl(tinyllama):
    return empas.search(tinyllama, method="exact")


@pytest.fixture(scope="session")
def nsga2_tl(tinyllama):
    return empas.search(tinyllama, method="nsga2", pop_size=100, generations=50, seed=0)


@pytest.fixture
def small_profile_dict():
    return {
        "format": "empas.sensitivity/1",
        "model": {"name": "tiny-model"},
        "loss": {"kind": "causal_lm", "baseline": 2.0},
        "choices": [2, 4, 8, 16],
        "units": [
            {
                "name": f"b{i}",
                "kind": "block",
                "params": 4096 * (i + 1),
                "shapes": [[64, 64 * (i + 1)]],
            }
            for i in range(4)
        ],
        "unsearched_bytes": 1000,
        "delta": [[0.4 / (i + 1), 0.02 / (i + 1), 0.001, 0.0] for i in range(4)],
    }
