"""Shared fixtures and the opt-in markers: slow (--run-slow) and gpu (--run-gpu,
and only where a CUDA device is present)."""

from __future__ import annotations

import os
from pathlib import Path

# Headless plotting everywhere, whatever the caller's environment says.
os.environ["MPLBACKEND"] = "Agg"

import pytest  # noqa: E402

import empas  # noqa: E402

DATA = Path(__file__).parent / "data"
ORIGINAL_PLANS = DATA / "empas_tinyllama"
ORIGINAL_PROFILE = Path(empas.__file__).parent / "data" / "tinyllama_sensitivity.json"
ARCHETYPES = ("balanced", "max_accuracy", "max_compression")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow")
    parser.addoption("--run-gpu", action="store_true", help="run tests marked gpu (needs CUDA)")
    parser.addoption(
        "--dashboard-screenshot",
        metavar="PNG",
        help="the browser test of the dashboard also saves the demo page there (docs/)",
    )
    parser.addoption(
        "--dashboard-demo",
        metavar="DIR",
        help="the browser test's demo directory: a copy of DIR (`empas demo` output) "
        "instead of the built-in fixture",
    )


def _cuda_available() -> bool:
    try:
        import torch
    except Exception:  # not installed, or a broken install
        return False
    try:
        return bool(torch.cuda.is_available())
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--run-slow")
    want_gpu = config.getoption("--run-gpu")
    has_cuda = None  # probed once, and only when a gpu test is asked for
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: pass --run-slow"))
        if "gpu" in item.keywords:
            if not want_gpu:
                item.add_marker(pytest.mark.skip(reason="gpu: pass --run-gpu on a CUDA machine"))
                continue
            if has_cuda is None:
                has_cuda = _cuda_available()
            if not has_cuda:
                item.add_marker(pytest.mark.skip(reason="gpu: no CUDA device (torch)"))


# -- profiles and results ---------------------------------------------------------


@pytest.fixture(scope="session")
def tinyllama():
    """The shipped example: the original EMPAS TinyLlama-1.1B-Chat profile."""
    return empas.load_profile("example:tinyllama")


@pytest.fixture(scope="session")
def exact_tl(tinyllama):
    return empas.search(tinyllama, method="exact")


@pytest.fixture(scope="session")
def nsga2_tl(tinyllama):
    return empas.search(tinyllama, method="nsga2", pop_size=100, generations=50, seed=0)


# -- the original EMPAS files -----------------------------------------------------


@pytest.fixture(scope="session")
def original_profile_path() -> Path:
    """The original EMPAS profile file (layer_params + sensitivity)."""
    assert ORIGINAL_PROFILE.is_file(), ORIGINAL_PROFILE
    return ORIGINAL_PROFILE


@pytest.fixture(scope="session")
def original_plan_paths() -> dict[str, Path]:
    """archetype -> the original EMPAS artifact (balanced.json, ...)."""
    paths = {name: ORIGINAL_PLANS / f"{name}.json" for name in ARCHETYPES}
    for p in paths.values():
        assert p.is_file(), p
    return paths


@pytest.fixture
def small_profile_dict():
    """A valid 4-unit empas.sensitivity/1 document to corrupt in bad-input tests."""
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


# -- real models, offline (torch + transformers) ------------------------------------

TINY_TEST_MODEL = dict(
    n_layers=4, hidden=64, intermediate=176, heads=4, kv_heads=2, vocab=512,
    max_positions=64, seq_len=64, batch_size=8, steps=400, lr=1e-2,
)  # fmt: skip


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """A 4-block Llama-layout model trained (briefly) on real text, saved with
    save_pretrained: the offline stand-in for TinyLlama in the tests."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from empas.models import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("models") / "tiny", verbose=False, **TINY_TEST_MODEL)


@pytest.fixture(scope="session")
def calib_texts():
    from empas.models import corpus

    return corpus("train")


@pytest.fixture(scope="session")
def eval_texts():
    """Held-out text (the corpus' eval split): never used for calibration."""
    from empas.models import corpus

    return corpus("eval")


@pytest.fixture(scope="session")
def tiny_profile(tiny_model_path, calib_texts):
    """A block-level profile of the tiny test model with 0 (drop), 2, 3, 4, 8 bits."""
    return empas.profile(
        tiny_model_path,
        calib_texts,
        units="block",
        choices=(0, 2, 3, 4, 8),
        n_tokens=2048,
        seq_len=64,
        batch_size=8,
        progress=False,
    )
