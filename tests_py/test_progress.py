"""Progress reporting: callbacks, early stop, exceptions, the tqdm bar."""

from __future__ import annotations

import numpy as np
import pytest

import empas

KEYS = {
    "generation",
    "evaluations",
    "front_size",
    "n_feasible",
    "best_loss",
    "min_bytes",
    "hypervolume",
    "seconds",
}


@pytest.fixture(scope="module")
def prof():
    return empas.synthetic_profile(300, seed=5)


def test_callback_gets_one_dict_per_generation(prof):
    seen = []
    res = empas.search(prof, pop_size=16, generations=12, progress=seen.append)
    assert all(isinstance(s, dict) and set(s) == KEYS for s in seen)
    assert [s["generation"] for s in seen] == list(range(13))  # 0 = initial population
    assert seen == res.history
    assert not res.extra["stopped_early"]
    assert res.extra["generations_run"] == 12


def test_returning_false_stops_early(prof):
    seen = []

    def cb(stats):
        seen.append(stats["generation"])
        return stats["generation"] < 4

    res = empas.search(prof, pop_size=16, generations=30, progress=cb)
    assert seen == [0, 1, 2, 3, 4]
    assert res.extra["stopped_early"] is True
    assert res.extra["generations_run"] == 4
    assert len(res.history) == 5
    assert len(res.front) > 0 and set(res.archetypes) >= {"balanced"}


@pytest.mark.parametrize("value", [True, None, 1])
def test_other_return_values_continue(prof, value):
    res = empas.search(prof, pop_size=16, generations=3, progress=lambda s: value)
    assert not res.extra["stopped_early"] and res.extra["generations_run"] == 3


@pytest.mark.parametrize("value", [False, 0, np.False_, []])
def test_falsy_return_values_stop(prof, value):
    res = empas.search(prof, pop_size=16, generations=3, progress=lambda s: value)
    assert res.extra["stopped_early"] and res.extra["generations_run"] == 0


@pytest.mark.parametrize("at", [0, 2])
def test_exception_in_callback_propagates(prof, at):
    class Boom(Exception):
        pass

    def cb(stats):
        if stats["generation"] == at:
            raise Boom(f"boom at {at}")

    with pytest.raises(Boom, match=f"boom at {at}"):
        empas.search(prof, pop_size=16, generations=10, progress=cb)
    with pytest.raises(KeyError, match="boom"):
        empas.search(prof, pop_size=16, generations=10, progress=lambda s: {}["boom"])
    # The interpreter and the library are fine afterwards.
    res = empas.search(prof, pop_size=16, generations=3)
    assert res.extra["generations_run"] == 3


def test_progress_bar(prof, capsys):
    res = empas.search(prof, pop_size=16, generations=5, progress=True)
    assert res.extra["generations_run"] == 5
    err = capsys.readouterr().err
    assert "NSGA-II" in err and "5/5" in err


def test_progress_bar_closes_on_error(prof, capsys):
    with pytest.raises(ValueError, match="pop_size"):
        empas.search(prof, pop_size=2, generations=5, progress=True)
    empas.search(prof, pop_size=16, generations=2, progress=True)
    assert "2/2" in capsys.readouterr().err
