"""Every bad input is a clear Python exception naming the problem, never a crash."""

from __future__ import annotations

import json

import numpy as np
import pytest

import empas


def write(tmp_path, doc, name="p.json"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def test_errors_are_value_errors():
    for cls in (empas.FormatError, empas.InfeasibleError):
        assert issubclass(cls, ValueError) and issubclass(cls, empas.EmpasError)
    assert issubclass(empas.NativeBuildError, ImportError)


# -- profile files ------------------------------------------------------------------


def test_malformed_json(tmp_path):
    path = write(tmp_path, '{"format": "empas.sensitivity/1", ')
    with pytest.raises(empas.FormatError, match="not valid JSON") as info:
        empas.load_profile(path)
    assert str(path) in str(info.value)  # names the file
    with pytest.raises(empas.FormatError, match="not valid JSON"):
        empas.Profile.from_json("{")
    with pytest.raises(empas.FormatError, match="not valid JSON"):
        empas.load_plan(write(tmp_path, "{]", "plan.json"))


def test_nan_literal(tmp_path, small_profile_dict):
    text = json.dumps(small_profile_dict).replace("0.001", "NaN", 1)
    assert "NaN" in text
    with pytest.raises(empas.FormatError, match="NaN"):
        empas.load_profile(write(tmp_path, text))
    small_profile_dict["delta"][0][0] = float("nan")
    with pytest.raises(empas.FormatError, match="NaN"):
        empas.Profile.from_dict(small_profile_dict)


def test_infinite_delta(tmp_path, small_profile_dict):
    text = json.dumps(small_profile_dict).replace("0.001", "1e999", 1)
    assert "1e999" in text
    with pytest.raises(empas.FormatError, match="not finite"):
        empas.load_profile(write(tmp_path, text))
    small_profile_dict["delta"][0][0] = float("inf")
    with pytest.raises(empas.FormatError, match="infinity"):
        empas.Profile.from_dict(small_profile_dict)


def test_negative_delta_policies(tmp_path, small_profile_dict):
    small_profile_dict["delta"][1][1] = -0.05
    path = write(tmp_path, small_profile_dict)
    with pytest.raises(empas.FormatError, match="negative.*b1"):
        empas.load_profile(path)
    with pytest.raises(empas.FormatError, match="negative"):
        empas.Profile.from_dict(small_profile_dict)
    assert empas.load_profile(path, negative="clamp").delta[1, 1] == 0.0
    assert empas.load_profile(path, negative="keep").delta[1, 1] == -0.05
    assert empas.Profile.from_dict(small_profile_dict, negative="keep").delta[1, 1] == -0.05
    with pytest.raises(ValueError, match="negative must be"):
        empas.load_profile(path, negative="ignore")


def test_missing_and_extra_units(tmp_path, small_profile_dict, original_profile_path):
    d = json.loads(json.dumps(small_profile_dict))
    d["delta"].append([0.1, 0.01, 0.0, 0.0])
    with pytest.raises(empas.FormatError, match="missing or extra units"):
        empas.Profile.from_dict(d)
    d = json.loads(json.dumps(small_profile_dict))
    d["units"].pop()
    with pytest.raises(empas.FormatError, match="missing or extra units"):
        empas.Profile.from_dict(d)
    d = json.loads(json.dumps(small_profile_dict))
    d["delta"][2].pop()
    with pytest.raises(empas.FormatError, match="delta"):
        empas.Profile.from_dict(d)
    raw = json.loads(original_profile_path.read_text())
    raw["sensitivity"]["30_4"] = 0.1
    with pytest.raises(empas.FormatError, match="extra unit"):
        empas.load_profile(write(tmp_path, raw))
    raw = json.loads(original_profile_path.read_text())
    raw["layer_params"]["22"] = 44040192
    with pytest.raises(empas.FormatError, match="missing unit"):
        empas.load_profile(write(tmp_path, raw))


def test_unsupported_format_and_missing_fields(tmp_path, small_profile_dict):
    d = dict(small_profile_dict, format="empas.sensitivity/2")
    with pytest.raises(empas.FormatError, match="unsupported format"):
        empas.Profile.from_dict(d)
    with pytest.raises(empas.FormatError, match="empas.sensitivity/2"):
        empas.load_profile(write(tmp_path, d))
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
    with pytest.raises(FileNotFoundError, match="profile file not found"):
        empas.search(str(tmp_path / "nope.json"))
    with pytest.raises(ValueError, match="unknown example"):
        empas.load_profile("example:gpt5")


def test_a_plan_is_not_a_profile_and_vice_versa(original_profile_path, original_plan_paths):
    with pytest.raises(empas.FormatError, match="profile"):
        empas.load_profile(original_plan_paths["balanced"])
    with pytest.raises(empas.FormatError, match="plan"):
        empas.load_plan(original_profile_path)


# -- plans that do not fit the profile ----------------------------------------------------


def test_choices_outside_the_allowed_set(tinyllama, small_profile_dict):
    with pytest.raises(empas.FormatError, match="5 bits.*not among the profile's choices"):
        tinyllama.evaluate([5] * 22)
    d = tinyllama.plan([4] * 22).to_dict()
    d["units"][3]["bits"] = 5
    plan5 = empas.Plan.from_dict(d)  # 5 bits is a valid plan, just not for this profile
    with pytest.raises(empas.FormatError, match="'layer_3' has 5 bits"):
        tinyllama.evaluate(plan5)
    with pytest.raises(empas.FormatError, match="'layer_3' has 5 bits"):
        empas.search(tinyllama, initial=[plan5], generations=1)
    with pytest.raises(empas.FormatError, match="22 bit widths"):
        tinyllama.evaluate([4] * 21)
    with pytest.raises(empas.FormatError, match="integers"):
        tinyllama.evaluate([4.0] * 22)
    small_profile_dict["delta"][2][1] = None  # b2 does not allow 4 bits
    prof = empas.Profile.from_dict(small_profile_dict)
    with pytest.raises(empas.FormatError, match="does not allow"):
        prof.evaluate([4, 4, 4, 4])
    with pytest.raises(ValueError, match="pinned unit 'b2': 4 bits"):
        empas.search(prof, pinned={"b2": 4})
    with pytest.raises(ValueError, match="pinned unit 'layer_0': 3 bits"):
        empas.search(tinyllama, pinned={"layer_0": 3})
    with pytest.raises(ValueError, match="pinned unit 'nope'"):
        empas.search(prof, pinned={"nope": 4})
    with pytest.raises(ValueError, match="allowed bits 3"):
        empas.search(prof, allowed_bits=[3])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"pinned": {"layer_0": 8.7}}, "integer"),
        ({"pinned": {"layer_0": "8"}}, "integer"),
        ({"pinned": "layer_0=8"}, "pinned must be"),
        ({"allowed_bits": [2, 4.5]}, "integer"),
        ({"allowed_bits": 4}, "allowed_bits"),
    ],
)
def test_bits_must_be_integers(tinyllama, kwargs, match):
    with pytest.raises(ValueError, match=match):
        empas.search(tinyllama, generations=1, **kwargs)


def test_plan_for_another_model(tinyllama, small_profile_dict):
    other = empas.Profile.from_dict(small_profile_dict)
    plan = other.plan([4, 4, 4, 4])
    with pytest.raises(empas.FormatError, match="tiny-model"):
        tinyllama.evaluate(plan)
    with pytest.raises(empas.FormatError, match="tiny-model"):
        empas.search(tinyllama, initial=[plan])
    with pytest.raises(empas.FormatError, match="tiny-model"):
        empas.search(tinyllama, method="nsga2", initial=[tinyllama.plan([4] * 22), plan])


def _tl_plan(tinyllama, edit):
    d = tinyllama.plan([4] * 22).to_dict()
    edit(d["units"])
    return empas.Plan.from_dict(d)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda u: u.pop(), r"21 plan units vs 22 profile units.*missing units: 'layer_21'"),
        (lambda u: u.append(dict(u[0], name="layer_22")), r"23 plan units.*unknown.*'layer_22'"),
        (lambda u: u[0].update(name="block_0"), r"missing units: 'layer_0'.*unknown.*'block_0'"),
    ],
    ids=["fewer-units", "more-units", "renamed-unit"],
)
def test_plan_with_other_units(tinyllama, edit, match):
    plan = _tl_plan(tinyllama, edit)
    assert plan.model_name == tinyllama.model_name
    with pytest.raises(empas.FormatError, match=match):
        tinyllama.evaluate(plan)
    with pytest.raises(empas.FormatError, match=match):
        empas.search(tinyllama, initial=[plan], generations=1)


def test_plan_unit_maps_and_lists(tinyllama):
    bits = dict.fromkeys(tinyllama.unit_names, 4)
    assert tinyllama.evaluate(bits) == tinyllama.evaluate([4] * 22)
    with pytest.raises(empas.FormatError, match="unknown to the profile"):
        tinyllama.evaluate({**bits, "layer_99": 4})
    del bits["layer_5"]
    with pytest.raises(empas.FormatError, match="missing units.*layer_5"):
        tinyllama.evaluate(bits)
    with pytest.raises(empas.FormatError, match="22 bit widths"):
        empas.search(tinyllama, initial=[[4] * 21], generations=1)


def test_unsupported_plan_files(tmp_path, tinyllama):
    d = tinyllama.plan([4] * 22).to_dict()
    with pytest.raises(empas.FormatError, match="unsupported format.*empas.plan/7"):
        empas.Plan.from_dict(dict(d, format="empas.plan/7"))
    with pytest.raises(empas.FormatError, match="empas.plan/7") as info:
        empas.load_plan(write(tmp_path, dict(d, format="empas.plan/7")))
    assert "p.json" in str(info.value)
    with pytest.raises(empas.FormatError, match="not a supported precision"):
        empas.Plan.from_dict(dict(d, units=[{"name": "layer_0", "bits": 1}]))
    with pytest.raises(empas.FormatError, match="NaN"):
        empas.load_plan(write(tmp_path, json.dumps(d).replace('"bits": 4', '"bits": NaN', 1)))


# -- search arguments ---------------------------------------------------------------


def test_budget_below_smallest_reachable(tinyllama):
    smallest = tinyllama.evaluate([2] * 22)["bytes"]
    assert smallest == 242221056
    for method in ("nsga2", "exact"):
        with pytest.raises(empas.InfeasibleError, match=f"smallest reachable size of {smallest}"):
            empas.search(tinyllama, method=method, max_bytes=smallest - 1)
        with pytest.raises(empas.InfeasibleError, match=str(smallest)):
            empas.search(tinyllama, method=method, max_bytes="100MB")
    res = empas.search(tinyllama, method="exact", max_bytes=smallest)  # exactly fits
    assert res.front.bytes.tolist() == [smallest]
    with pytest.raises(empas.InfeasibleError, match="average-bits"):
        empas.search(tinyllama, max_avg_bits=1.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"pop_size": 3}, "pop_size must be an integer >= 4"),
        ({"pop_size": 0}, "pop_size"),
        ({"pop_size": 10.5}, "pop_size"),
        ({"pop_size": 2**31}, "pop_size"),
        ({"generations": 0}, "generations must be an integer >= 1"),
        ({"generations": -3}, "generations"),
        ({"generations": 2**40}, "generations"),
        ({"method": "random"}, "method must be one of"),
        ({"method": None}, "method"),
        ({"threads": 0}, "threads must be an integer >= 1"),
        ({"threads": -1}, "threads"),
        ({"threads": "2"}, "threads"),
        ({"threads": 1.5}, "threads"),
        ({"threads": 2**31}, "threads"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"max_bytes": "eight gigs"}, "invalid size 'eight gigs'"),
        ({"max_bytes": "8 parsecs"}, "invalid size"),
        ({"max_bytes": -5}, "invalid size"),
        ({"max_bytes": "1e400"}, "invalid size"),
        ({"max_bytes": 2**63}, "max_bytes"),
        ({"max_bytes": "1e30GB"}, "max_bytes"),
        ({"max_avg_bits": float("nan")}, "max_avg_bits"),
        ({"max_avg_bits": 0}, "max_avg_bits"),
        ({"crossover_prob": 2.0}, "crossover_prob"),
        ({"mutation_prob": -0.1}, "mutation_prob"),
        ({"sampling": "sobol"}, "sampling"),
        ({"mutation": "gauss"}, "mutation"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"method": "exact", "latency": True}, "latency"),
        ({"method": "exact", "max_avg_bits": 4}, "max_avg_bits"),
        ({"method": "exact", "resolution": 0}, "resolution"),
        ({"latency": True}, "needs the profile.s latency table"),
    ],
)
def test_bad_search_arguments(tinyllama, kwargs, match):
    with pytest.raises(ValueError, match=match):
        empas.search(tinyllama, **kwargs)


def test_numpy_integers_are_accepted(tinyllama):
    res = empas.search(
        tinyllama, pop_size=np.int64(16), generations=np.int32(2), seed=np.uint64(3), threads=1
    )
    assert res.config.pop_size == 16 and type(res.config.pop_size) is int
    assert json.loads(res.to_json())["config"]["seed"] == 3
    assert res.archetypes["balanced"].provenance["search"]["generations"] == 2


def test_exact_front_too_large_is_a_clear_error():
    prof = empas.synthetic_profile(60, seed=1)
    with pytest.raises(ValueError, match="max_points"):
        empas.search(prof, method="exact", max_points=10)
    # the option the error recommends: a front within its stated bound of the exact one
    res = empas.search(prof, method="exact", max_points=10_000, resolution="10MB")
    exact = empas.search(prof, method="exact")
    bound = res.extra["error_bound_bytes"]
    assert not res.exact and 0 < bound <= 10**7 and 1 < len(res.front) < len(exact.front)
    assert res.front.bytes[0] == exact.front.bytes[0]  # the smallest plan
    assert res.front.loss[-1] == pytest.approx(exact.front.loss[-1], rel=1e-12)  # the best
    for b, loss in zip(exact.front.bytes, exact.front.loss):
        assert np.any((res.front.loss <= loss + 1e-12) & (res.front.bytes <= b + bound))


# -- sizes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expect",
    [
        ("8GB", 8 * 10**9),
        ("8gb", 8 * 10**9),
        (" 8 GB ", 8 * 10**9),
        ("1.5GiB", 3 * 2**29),
        ("700MB", 7 * 10**8),
        ("512KiB", 512 * 1024),
        ("1e3KB", 10**6),
        ("123", 123),
        ("123B", 123),
        (123, 123),
        (4096.0, 4096),
    ],
)
def test_parse_size(text, expect):
    assert empas.parse_size(text) == expect
    assert type(empas.parse_size(text)) is int


@pytest.mark.parametrize(
    "bad",
    ["", "GB", "8 parsecs", "8XB", "-1GB", "1.5.5GB", "1e400", "1e400GB", None, True, [8], -5]
    + [float("inf"), float("nan")],
)
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError, match="invalid size"):
        empas.parse_size(bad)


def test_format_bytes():
    assert empas.format_bytes(528482304) == "504.0 MiB"
    assert empas.format_bytes(512) == "512 B"
    assert empas.format_bytes(3 * 2**30) == "3.0 GiB"
