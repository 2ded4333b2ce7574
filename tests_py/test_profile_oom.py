"""A device that runs out of memory while profiling (issue 16): the backend's
error becomes a DeviceMemoryError naming the device, the memory the estimate
(empas.profile_cost) says the run needs, and what to change; on CPU by making
the runner raise the errors CUDA and the CPU allocator raise."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch  # noqa: E402

import empas  # noqa: E402
from empas.profile.oom import device_capacity, is_out_of_memory  # noqa: E402
from empas.profile.runner import Runner  # noqa: E402
from empas.util.sizes import format_bytes  # noqa: E402

SETTINGS = dict(units="block", choices=(2, 4), n_tokens=256, seq_len=64, batch_size=4)

OOMS = {
    "cuda": lambda: torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.1 GiB"
    ),
    "cpu-allocator": lambda: RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
        "you tried to allocate 8589934592 bytes. Error code 12 (Cannot allocate memory)"
    ),
    "python": lambda: MemoryError(),
}


def test_is_out_of_memory():
    for make in OOMS.values():
        assert is_out_of_memory(make())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not an allocation failure


@pytest.mark.parametrize("kind", sorted(OOMS))
@pytest.mark.parametrize("phase", ["baseline", "experiment"])
def test_out_of_memory_names_the_device_and_the_estimate(
    tiny_model_path, calib_texts, monkeypatch, kind, phase
):
    real_run = Runner.run
    calls = []

    def fail(self, *a, **k):
        raise OOMS[kind]()

    def run_then_fail(self, *a, **k):  # the first experiment passes, the second fails
        calls.append(1)
        if len(calls) == 2:
            raise OOMS[kind]()
        return real_run(self, *a, **k)

    if phase == "baseline":
        monkeypatch.setattr(Runner, "baseline", fail)
    else:
        monkeypatch.setattr(Runner, "run", run_then_fail)
    with pytest.raises(empas.DeviceMemoryError) as err:
        empas.profile(tiny_model_path, calib_texts, progress=False, **SETTINGS)
    exc = err.value
    est = empas.profile_cost(tiny_model_path, benchmark=False, ranks=(), **SETTINGS)
    assert exc.needed_bytes == est.device_bytes  # the figure `profile --dry-run` prints
    name, capacity = device_capacity("cpu")
    assert exc.device == name == "cpu" and exc.capacity_bytes == capacity
    msg = str(exc)
    assert msg.startswith(f"cpu of {format_bytes(capacity)} ran out of memory during the ")
    assert f"{format_bytes(est.device_bytes)} ({est.device_bytes:,} bytes) per rank" in msg
    assert f"weights {format_bytes(est.weight_bytes)}" in msg
    assert f"block-input cache {format_bytes(est.cache_bytes)}" in msg
    assert "--batch-size, now 4" in msg and "--cache-device cpu" in msg
    assert "More ranks share the time, not the memory" in msg
    if phase == "baseline":
        assert exc.phase.startswith("the baseline pass")
    else:
        assert exc.phase.startswith("the experiment ") and " at " in exc.phase
    assert isinstance(exc, empas.ProfileError) and isinstance(exc.__cause__, type(OOMS[kind]()))


def test_other_runtime_errors_pass_through(tiny_model_path, calib_texts, monkeypatch):
    def fail(self, *a, **k):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(Runner, "baseline", fail)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as err:
        empas.profile(tiny_model_path, calib_texts, progress=False, **SETTINGS)
    assert not isinstance(err.value, empas.DeviceMemoryError)


def test_the_cli_reports_it(tiny_model_path, tmp_path, calib_texts, monkeypatch, capsys):
    from empas.cli import main

    calib = tmp_path / "calib.txt"
    calib.write_text("\n\n".join(calib_texts))

    def fail(self, *a, **k):
        raise OOMS["cuda"]()

    monkeypatch.setattr(Runner, "baseline", fail)
    args = ["profile", str(tiny_model_path), "--calib", str(calib), "-o", str(tmp_path / "p.json")]
    args += ["--bits", "2,4", "--n-tokens", "256", "--seq-len", "64", "--quiet"]
    assert main(args) == 2  # bad input / resources: a clear message, not a traceback
    err = capsys.readouterr().err
    assert "empas profile: error: cpu of " in err and "ran out of memory during the baseline" in err
    assert "Traceback" not in err
