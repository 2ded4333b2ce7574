"""Same seed, same answer on any thread count; checkpoints resume exactly."""

from __future__ import annotations

import pytest

import empas


@pytest.fixture(scope="module")
def big():
    return empas.synthetic_profile(300, seed=5)


def _key(res):
    return [tuple(res.front.bits(i)) for i in range(len(res.front))], res.front.loss.tolist()


def test_threads_do_not_change_the_result(big):
    one = empas.search(big, pop_size=64, generations=15, seed=2, threads=1)
    two = empas.search(big, pop_size=64, generations=15, seed=2, threads=2)
    assert _key(one) == _key(two)
    other = empas.search(big, pop_size=64, generations=15, seed=3, threads=2)
    assert _key(other) != _key(one)


def test_checkpoint_resume_equals_uninterrupted(tmp_path, big):
    full = empas.search(big, pop_size=32, generations=40, seed=1)
    ck = tmp_path / "ck.json"
    part = empas.search(big, pop_size=32, generations=20, seed=1, checkpoint=ck, checkpoint_every=5)
    assert ck.exists() and part.extra["generations_run"] == 20
    resumed = empas.search(big, pop_size=32, generations=40, seed=1, checkpoint=ck)
    assert resumed.extra["resumed_from"] == 20
    assert _key(resumed) == _key(full)
    assert [h["hypervolume"] for h in resumed.history] == [h["hypervolume"] for h in full.history]
    with pytest.raises(empas.FormatError, match="another search"):
        empas.search(big, pop_size=32, generations=40, seed=9, checkpoint=ck)


def test_progress_callback(big):
    seen = []

    def cb(stats):
        seen.append(stats["generation"])
        return stats["generation"] < 4

    res = empas.search(big, pop_size=16, generations=30, progress=cb)
    assert seen == [0, 1, 2, 3, 4]
    assert res.extra["stopped_early"] and res.extra["generations_run"] == 4


def test_exception_in_callback_propagates(big):
    def cb(stats):
        if stats["generation"] == 2:
            raise KeyError("boom from callback")

    with pytest.raises(KeyError, match="boom"):
        empas.search(big, pop_size=16, generations=10, progress=cb)


def test_progress_bar(big):
    res = empas.search(big, pop_size=16, generations=5, progress=True)
    assert res.extra["generations_run"] == 5


def test_ctrl_c_interrupts_a_long_search(big):
    import _thread
    import threading
    import time

    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        empas.search(big, pop_size=64, generations=10_000_000)
    timer.cancel()
    assert time.perf_counter() - t0 < 10
