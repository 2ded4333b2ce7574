"""Every bad input is a clear Python exception naming the problem, never a crash."""

from __future__ import annotations

import json

import pytest

import empas

from .conftest import ORIGINAL_PROFILE


def write(tmp_path, doc, name="p.json"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def test_malformed_json(tmp_path):
    with pytest.raises(empas.FormatError, match="not valid JSON"):
        empas.load_profile(write(tmp_path, '{"format": "empas.sensitivity/1", '))


def test_nan_literal(tmp_path, small_profile_dict):
    text = json.dumps(small_profile_dict).replace("0.001", "NaN", 1)
    with pytest.raises(empas.FormatError, match="NaN"):
        empas.load_profile(write(tmp_path, text))
    small_profile_dict["delta"][0][0] = float("nan")
    with pytest.raises(empas.FormatError, match="NaN"):
        empas.Profile.from_dict(small_profile_dict)


def test_infinite_delta(tmp_path, small_profile_dict):
    text = json.dumps(small_profile_dict).replace("0.001", "1e999", 1)
    with pytest.raises(empas.FormatError, match="not finite"):
        empas.load_profile(write(tmp_path, text))


def test_negative_delta_policies(tmp_path, small_profile_dict):
    small_profile_dict["delta"][1][1] = -0.05
    path = write(tmp_path, small_profile_dict)
    with pytest.raises(empas.FormatError, match="negative.*b1"):
        empas.load_profile(path)
    assert empas.load_profile(path, negative="clamp").delta[1, 1] == 0.0
    assert empas.load_profile(path, negative="keep").delta[1, 1] == -0.05
    with pytest.raises(ValueError, match="negative must be"):
        empas.load_profile(path, negative="ignore")


def test_missing_and_extra_units(tmp_path, small_profile_dict):
    d = json.loads(json.dumps(small_profile_dict))
    d["delta"].append([0.1, 0.01, 0.0, 0.0])
    with pytest.raises(empas.FormatError, match="missing or extra units"):
        empas.Profile.from_dict(d)
    d = json.loads(json.dumps(small_profile_dict))
    d["units"].pop()
    with pytest.raises(empas.FormatError, match="missing or extra units"):
        empas.Profile.from_dict(d)
    raw = json.loads(ORIGINAL_PROFILE.read_text())
    raw["sensitivity"]["30_4"] = 0.1
    with pytest.raises(empas.FormatError, match="extra unit"):
        empas.load_profile(write(tmp_path, raw))
    raw = json.loads(ORIGINAL_PROFILE.read_text())
    raw["layer_params"]["22"] = 44040192
    with pytest.raises(empas.FormatError, match="missing unit"):
        empas.load_profile(write(tmp_path, raw))


def test_unsupported_format_and_missing_fields(small_profile_dict):
    d = dict(small_profile_dict, format="empas.sensitivity/2")
    with pytest.raises(empas.FormatError, match="unsupported format"):
        empas.Profile.from_dict(d)
    d = {k: v for k, v in small_profile_dict.items() if k != "loss"}
    with pytest.raises(empas.FormatError, match="'loss'"):
        empas.Profile.from_dict(d)
    d = dict(small_profile_dict, choices=[2, 12, 8, 16])
    with pytest.raises(empas.FormatError, match="12 bits is not a supported precision"):
        empas.Profile.from_dict(d)
    d = dict(small_profile_dict, choices=[2, 4, 4, 16])
    with pytest.raises(empas.FormatError, match="twice"):
        empas.Profile.from_dict(d)
    with pytest.raises(empas.FormatError, match="expected a JSON object"):
        empas.Profile.from_json("[1, 2]")


def test_files_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="profile file not found"):
        empas.load_profile(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="plan file not found"):
        empas.load_plan(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="unknown example"):
        empas.load_profile("example:gpt5")


def test_choices_outside_the_allowed_set(tinyllama, small_profile_dict):
    with pytest.raises(empas.FormatError, match="not among the profile's choices"):
        tinyllama.evaluate([5] * 22)
    with pytest.raises(empas.FormatError, match="22 bit widths"):
        tinyllama.evaluate([4] * 21)
    small_profile_dict["delta"][2][1] = None  # b2 does not allow 4 bits
    prof = empas.Profile.from_dict(small_profile_dict)
    with pytest.raises(empas.FormatError, match="does not allow"):
        prof.evaluate([4, 4, 4, 4])
    with pytest.raises(ValueError, match="pinned unit 'b2'"):
        empas.search(prof, pinned={"b2": 4})
    with pytest.raises(ValueError, match="pinned unit 'nope'"):
        empas.search(prof, pinned={"nope": 4})
    with pytest.raises(ValueError, match="allowed bits 3"):
        empas.search(prof, allowed_bits=[3])


def test_budget_below_smallest_reachable(tinyllama):
    smallest = tinyllama.evaluate([2] * 22)["bytes"]
    for method in ("nsga2", "exact"):
        with pytest.raises(empas.InfeasibleError, match=str(smallest)):
            empas.search(tinyllama, method=method, max_bytes=smallest - 1)
    with pytest.raises(empas.InfeasibleError, match="average-bits"):
        empas.search(tinyllama, max_avg_bits=1.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"pop_size": 3}, "pop_size"),
        ({"pop_size": 10.5}, "pop_size"),
        ({"generations": 0}, "generations"),
        ({"method": "random"}, "method"),
        ({"threads": 0}, "threads"),
        ({"seed": -1}, "seed"),
        ({"max_bytes": "eight gigs"}, "invalid size"),
        ({"max_bytes": -5}, "invalid size"),
        ({"max_avg_bits": float("nan")}, "max_avg_bits"),
        ({"crossover_prob": 2.0}, "crossover_prob"),
        ({"sampling": "sobol"}, "sampling"),
        ({"method": "exact", "latency": True}, "latency"),
        ({"latency": True}, "no latency table"),
    ],
)
def test_bad_search_arguments(tinyllama, kwargs, match):
    with pytest.raises(ValueError, match=match):
        empas.search(tinyllama, **kwargs)


def test_plan_for_another_model(tinyllama, small_profile_dict):
    other = empas.Profile.from_dict(small_profile_dict)
    plan = other.plan([4, 4, 4, 4])
    with pytest.raises(empas.FormatError, match="tiny-model"):
        tinyllama.evaluate(plan)
    with pytest.raises(empas.FormatError, match="tiny-model"):
        empas.search(tinyllama, initial=[plan])
    d = plan.to_dict()
    d["model"]["name"] = tinyllama.model_name
    with pytest.raises(empas.FormatError, match="missing units"):
        tinyllama.evaluate(empas.Plan.from_dict(d))
    with pytest.raises(empas.FormatError, match="unsupported format"):
        empas.Plan.from_dict(dict(d, format="empas.plan/7"))
    with pytest.raises(empas.FormatError, match="not a supported precision"):
        empas.Plan.from_dict(dict(d, units=[{"name": "b0", "bits": 1}]))


def test_exact_front_too_large_is_a_clear_error():
    prof = empas.synthetic_profile(60, seed=1)
    with pytest.raises(ValueError, match="max_points"):
        empas.search(prof, method="exact", max_points=10)
    res = empas.search(prof, method="exact", max_points=10_000, resolution="1MB")
    assert not res.exact and len(res.front) > 0


@pytest.mark.parametrize(
    "text, expect",
    [("8GB", 8 * 10**9), ("1.5GiB", 3 * 2**29), ("700MB", 7 * 10**8), ("123", 123), (4096, 4096)],
)
def test_parse_size(text, expect):
    assert empas.parse_size(text) == expect


@pytest.mark.parametrize("bad", ["", "GB", "8 parsecs", "-1GB", None, True, float("inf")])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError, match="invalid size"):
        empas.parse_size(bad)


def test_missing_native_build_is_actionable(monkeypatch):
    from empas import _native

    def fail(name):
        raise ImportError("libfoo.so: cannot open shared object file")

    monkeypatch.setattr(_native, "_core", None)
    monkeypatch.setattr(_native, "_error", None)
    monkeypatch.setattr(_native.importlib, "import_module", fail)
    with pytest.raises(empas.NativeBuildError, match="pip install --no-build-isolation"):
        _native.core()
    with pytest.raises(ImportError):  # NativeBuildError is an ImportError too
        empas.build_info()
