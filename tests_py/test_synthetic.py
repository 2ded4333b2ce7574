"""Synthetic profiles: valid, deterministic, and searchable."""

from __future__ import annotations

import json

import numpy as np
import pytest

import empas


@pytest.mark.parametrize("n", [1, 7, 13, 40, 300])
def test_synthetic_profiles_are_valid(n):
    prof = empas.synthetic_profile(n)
    assert prof.n_units == n and prof.choices == [2, 3, 4, 8, 16]
    assert len(set(prof.unit_names)) == n
    assert all(u.params > 0 for u in prof.units)
    d = prof.delta
    assert d.shape == (n, 5) and np.isfinite(d).all() and (d >= 0).all()
    assert (d[:, -1] == 0).all()  # 16 bits: untouched
    assert (np.diff(d, axis=1) <= 0).all()  # more bits never hurt more
    b = prof.bytes_table
    assert b.shape == (n, 5) and (np.diff(b, axis=1) > 0).all()
    # It is a real empas.sensitivity/1 document: it survives a JSON round trip.
    doc = json.loads(prof.to_json())
    assert doc["format"] == "empas.sensitivity/1"
    assert empas.Profile.from_json(json.dumps(doc)).fingerprint == prof.fingerprint


def test_synthetic_profiles_are_deterministic():
    a, b = empas.synthetic_profile(30, seed=4), empas.synthetic_profile(30, seed=4)
    assert a.fingerprint == b.fingerprint
    np.testing.assert_array_equal(a.delta, b.delta)
    c = empas.synthetic_profile(30, seed=5)
    assert c.fingerprint != a.fingerprint
    assert not np.array_equal(c.delta, a.delta)


def test_synthetic_choices():
    prof = empas.synthetic_profile(8, choices=(0, 2, 4, 16))
    assert prof.choices == [0, 2, 4, 16]
    assert (prof.delta[:, 0] > prof.delta[:, 1]).all()  # dropping a unit hurts most
    with pytest.raises(ValueError, match="n_units"):
        empas.synthetic_profile(0)
    with pytest.raises(ValueError, match="distinct"):
        empas.synthetic_profile(5, choices=(4, 4))


def test_exact_and_nsga2_on_a_synthetic_profile():
    prof = empas.synthetic_profile(40, seed=3)
    ex = empas.search(prof, method="exact")
    assert ex.exact and len(ex.front) > 10
    sizes = ex.front.bytes.tolist()
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert (np.diff(ex.front.loss) < 0).all()
    # The exact front's ends are the extreme plans.
    assert ex.front[0].bits == [2] * 40
    assert ex.front.loss[-1] == pytest.approx(prof.baseline)
    ga = empas.search(prof, generations=100, seed=1)
    ratio = ga.hypervolume / ex.hypervolume
    assert 0.9 < ratio <= 1.0 + 1e-12
    for loss, size in zip(ga.front.loss.tolist(), ga.front.bytes.tolist()):
        assert ex.best_under(size).predicted_loss <= loss + 1e-12
