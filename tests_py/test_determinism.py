"""Same seed, same answer on any thread count; checkpoints resume exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import empas


@pytest.fixture(scope="module")
def big():
    """300 units: enough for the parallel loops (variation, evaluation, sampling)."""
    return empas.synthetic_profile(300, seed=5)


@pytest.fixture(scope="module")
def big_latency(big):
    d = big.to_dict()
    d["latency"] = [[1.0 + b / 16 for b in d["choices"]] for _ in d["units"]]
    return empas.Profile.from_dict(d)


def _front(res):
    return [tuple(res.front.bits(i)) for i in range(len(res.front))], res.front.loss.tolist()


def _history(res):
    """History without wall-clock times."""
    return [{k: v for k, v in h.items() if k != "seconds"} for h in res.history]


def test_the_build_has_openmp():
    assert empas.build_info()["openmp"] is True  # else threads=2 would test nothing


@pytest.mark.parametrize("latency", [False, True], ids=["2-objective", "3-objective"])
def test_threads_do_not_change_the_result(big, big_latency, latency):
    prof = big_latency if latency else big
    kw = dict(pop_size=300, generations=8, seed=2, latency=latency)
    one = empas.search(prof, threads=1, **kw)
    two = empas.search(prof, threads=2, **kw)
    assert len(one.front) > 1
    assert _front(one) == _front(two)
    assert _history(one) == _history(two)
    assert one.hypervolume == two.hypervolume
    again = empas.search(prof, threads=2, **kw)
    assert _front(again) == _front(two)


def test_different_seeds_differ(big):
    kw = dict(pop_size=64, generations=10, threads=2)
    a = empas.search(big, seed=2, **kw)
    b = empas.search(big, seed=3, **kw)
    assert _front(a) != _front(b)
    assert _history(a) != _history(b)


def test_exact_is_deterministic_across_threads():
    """The same front for 1 thread, every core, and a count past the cores (capped),
    in this process and in a fresh one limited to one OpenMP thread."""
    from empas.search.config import available_cores

    prof = empas.synthetic_profile(40, seed=3)
    runs = {
        t: empas.search(prof, method="exact", threads=t) for t in (1, 2, available_cores(), 4096)
    }
    assert {r.config.threads for r in runs.values()} == {
        1,
        min(2, available_cores()),
        available_cores(),
    }
    fronts = [_front(r) for r in runs.values()]
    assert all(f == fronts[0] for f in fronts) and len(fronts[0][0]) > 10
    code = (
        "import empas, json\n"
        "r = empas.search(empas.synthetic_profile(40, seed=3), method='exact', threads=1)\n"
        "print(json.dumps([list(map(int, r.front.bits(i))) for i in range(len(r.front))]))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(Path(empas.__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert [tuple(b) for b in json.loads(done.stdout)] == fronts[0][0]


def test_checkpoint_resume_equals_uninterrupted(tmp_path, big):
    kw = dict(pop_size=32, seed=1, threads=2)
    full = empas.search(big, generations=40, **kw)
    ck = tmp_path / "ck.json"
    part = empas.search(big, generations=20, checkpoint=ck, checkpoint_every=5, **kw)
    assert ck.exists() and part.extra["generations_run"] == 20
    assert part.extra["resumed_from"] == -1
    assert json.loads(ck.read_text())  # a JSON document
    resumed = empas.search(big, generations=40, checkpoint=ck, **kw)
    assert resumed.extra["resumed_from"] == 20
    assert resumed.extra["generations_run"] == 40
    assert _front(resumed) == _front(full)
    assert len(resumed.history) == len(full.history) == 41
    assert _history(resumed) == _history(full)
    assert resumed.evaluations == full.evaluations
    assert resumed.hypervolume == full.hypervolume
    # The first 20 generations are those of the interrupted run.
    assert _history(resumed)[:21] == _history(part)


def test_checkpoint_of_another_search_is_refused(tmp_path, big):
    ck = tmp_path / "ck.json"
    empas.search(big, pop_size=32, generations=5, seed=1, checkpoint=ck)
    before = ck.read_bytes()
    with pytest.raises(empas.FormatError, match="another search"):
        empas.search(big, pop_size=32, generations=10, seed=9, checkpoint=ck)
    with pytest.raises(empas.FormatError, match="another search"):
        empas.search(big, pop_size=32, generations=10, seed=1, max_bytes="1GB", checkpoint=ck)
    other = empas.synthetic_profile(300, seed=6)
    with pytest.raises(empas.FormatError, match="another search"):
        empas.search(other, pop_size=32, generations=10, seed=1, checkpoint=ck)
    assert ck.read_bytes() == before  # a refused checkpoint is left alone


def test_corrupt_checkpoint_is_a_format_error(tmp_path, big):
    ck = tmp_path / "ck.json"
    ck.write_text('{"format": "empas.nsga2-checkpoint/1", ')
    with pytest.raises(empas.FormatError, match="not valid JSON"):
        empas.search(big, pop_size=32, generations=5, checkpoint=ck)
    ck.write_text(json.dumps({"format": "something/else"}))
    with pytest.raises(empas.FormatError, match="checkpoint"):
        empas.search(big, pop_size=32, generations=5, checkpoint=ck)


def test_ctrl_c_interrupts_a_long_search(big):
    import _thread
    import signal
    import threading
    import time

    # interrupt_main() does nothing when SIGINT is ignored, as it is for a test run
    # started in the background by a non-interactive shell (`cmd &`): Python then
    # installs no handler, and this test would run its 10M generations
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            empas.search(big, pop_size=64, generations=10_000_000)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert time.perf_counter() - t0 < 10
