"""Hostile inputs (issue 15): each case once crashed the process or returned a
wrong answer with exit 0; now it is a clear error naming the field, unit or
option (exit 2 from the CLI), or a correct result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import empas
from empas._native import core
from empas.errors import FormatError

from .subproc_util import child_env

ROOT = Path(__file__).resolve().parents[1]


_env = child_env


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "empas", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )


def _py(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=_env()
    )


def _write(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc))
    return path


# -- threads: capped before OpenMP sees them -------------------------------------------


@pytest.mark.parametrize("threads", [50_000, 100_000])
def test_huge_thread_counts_do_not_crash_the_cli(tmp_path, threads):
    """libgomp aborted ("Thread creation failed") at 50,000 and segfaulted at 100,000
    (with work enough for parallel regions: small populations run serially)."""
    prof = tmp_path / "p.json"
    empas.synthetic_profile(200, seed=2).save(prof)
    r = _cli("search", str(prof), "-o", str(tmp_path / "out"), "--pop-size", "256",
             "--generations", "2", "--threads", str(threads))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "out" / "result.json").is_file()


def test_huge_thread_counts_are_capped_in_the_python_api_and_the_core():
    code = (
        "import empas\n"
        "from empas._native import core\n"
        "prof = empas.synthetic_profile(200, seed=2)\n"
        "res = empas.search(prof, pop_size=256, generations=2, threads=100_000)\n"
        "assert 1 <= res.config.threads <= core().max_threads(), res.config.threads\n"
        "prob = prof.problem(None, None, {}, None, False)\n"
        "r = core().run_nsga2(prob, pop_size=256, generations=2, threads=100_000)\n"
        "assert r['generations_run'] == 2\n"
        "print('ok')\n"
    )
    r = _py(code)
    assert r.returncode == 0 and "ok" in r.stdout, (r.returncode, r.stderr[-2000:])


def test_thread_cap_is_the_available_cores():
    from empas.search.config import SearchConfig, available_cores

    assert core().max_threads() >= 1
    assert SearchConfig(threads=10**6).threads == available_cores()
    assert SearchConfig(threads=1).threads == 1


# -- byte counts: int64 overflow is an error naming the unit ---------------------------


def _one_unit(small_profile_dict, **unit):
    d = json.loads(json.dumps(small_profile_dict))
    d["units"][0].update(unit)
    if "shapes" in unit and unit["shapes"] is None:
        del d["units"][0]["shapes"]
    return d


def test_params_past_int64_bytes_name_the_unit(small_profile_dict):
    # 2**62 params x 2 bits overflowed to a negative byte count ("negative bytes
    # in the bytes table", no unit named) and load_profile accepted the row.
    d = _one_unit(small_profile_dict, params=2**62, shapes=None)
    with pytest.raises(FormatError, match=r"unit 'b0'.*overflows a 64-bit byte count"):
        empas.Profile.from_dict(d)


def test_shapes_past_int64_are_an_error(small_profile_dict):
    # [[2**32, 2**32]] gave a 268M-GiB 2-bit unit and a 0-byte fp16 unit, exit 0.
    d = _one_unit(small_profile_dict, params=2**63 - 1, shapes=[[2**32, 2**32]])
    with pytest.raises(FormatError, match=r"'b0'.*more weights than a 64-bit count"):
        empas.Profile.from_dict(d)
    d = _one_unit(small_profile_dict, params=2**62, shapes=[[2**31, 2**31]])
    with pytest.raises(FormatError, match=r"unit 'b0'.*overflows"):
        empas.Profile.from_dict(d)


def test_unsearched_bytes_past_int64_are_an_error(small_profile_dict, tmp_path):
    # 2**63 - 1 made every size -8.6e9 GiB with exit 0.
    d = dict(small_profile_dict, unsearched_bytes=2**63 - 1)
    with pytest.raises(FormatError, match="unsearched_bytes .* overflow a 64-bit byte count"):
        empas.Profile.from_dict(d)
    r = _cli("search", str(_write(tmp_path / "p.json", d)), "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "unsearched_bytes" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_unit_bytes_overflow_is_a_value_error():
    q = core().Quantizer()
    with pytest.raises(ValueError, match="overflows a 64-bit byte count"):
        core().unit_bytes(2**62, [], 4, q)
    assert core().unit_bytes(2**62, [], 0, q) == 0
    assert core().unit_bytes(2**58, [], 16, q) == 2**59


# -- loss sums: checked finite, nothing written --------------------------------------


def test_deltas_summing_to_infinity_are_an_error_and_nothing_is_written(
    small_profile_dict, tmp_path
):
    # deltas of 1e308 summed to inf: hypervolume inf/0, then a TypeError traceback
    # after result.json had been written with loss: null.
    d = json.loads(json.dumps(small_profile_dict))
    d["delta"] = [[1e308, 1e308, 0.0, 0.0] for _ in d["delta"]]
    with pytest.raises(FormatError, match="overflows a double"):
        empas.Profile.from_dict(d)
    r = _cli("search", str(_write(tmp_path / "p.json", d)), "-o", str(tmp_path / "o"),
             "--method", "exact")  # fmt: skip
    assert r.returncode == 2 and "overflows a double" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_a_baseline_that_swallows_the_deltas_is_an_error(small_profile_dict):
    # baseline 1.7e308 flattened the front to one plan, exit 0.
    d = json.loads(json.dumps(small_profile_dict))
    d["loss"]["baseline"] = 1.7e308
    with pytest.raises(FormatError, match="vanish"):
        empas.Profile.from_dict(d)


def test_problem_loss_sums_are_checked_in_the_core(small_profile_dict):
    """The same checks in Problem::finalize, for tables built outside a profile."""
    prof = empas.Profile.from_dict(small_profile_dict)
    res = empas.search(prof, method="exact")
    assert np.all(np.isfinite(res.front.loss)) and np.isfinite(res.hypervolume)
    assert res.hypervolume > 0


# -- the epsilon-grid front ------------------------------------------------------------


@pytest.mark.parametrize("resolution", [1, 50_000, 2_000_000, 10**12])
def test_epsilon_grid_is_within_its_stated_bound_of_the_exact_front(resolution):
    prof = empas.synthetic_profile(14, seed=5)
    exact = empas.search(prof, method="exact")
    grid = empas.search(prof, method="exact", resolution=resolution)
    bound = grid.extra["error_bound_bytes"]
    assert 0 <= bound <= resolution
    assert not grid.exact and exact.exact and exact.extra["error_bound_bytes"] == 0
    # the extremes: the smallest plan and the lowest-loss plan
    assert grid.front.bytes[0] == exact.front.bytes[0]
    assert grid.front.loss[0] == pytest.approx(exact.front.loss[0], rel=1e-12)
    assert grid.front.loss[-1] == pytest.approx(exact.front.loss[-1], rel=1e-12)
    if resolution >= 2_000_000:
        assert len(grid.front) < len(exact.front)
    # every exact point is covered: loss no greater, bytes at most `bound` more
    for b, loss in zip(exact.front.bytes, exact.front.loss):
        ok = (grid.front.loss <= loss + 1e-12) & (grid.front.bytes <= b + bound)
        assert ok.any(), (b, loss)
    assert "epsilon-grid front" in grid.summary()


def test_coarse_epsilon_grid_on_many_units_keeps_both_extremes():
    # --resolution 1GB on 10,000 units returned one all-fp16 plan (hypervolume 0).
    prof = empas.synthetic_profile(3000, seed=1)
    res = empas.search(prof, method="exact", resolution="1GB")
    assert len(res.front) >= 2 and res.hypervolume > 0
    prob = prof.problem(None, None, {}, None, False)
    assert res.front.bytes[0] == prob.min_bytes
    assert res.front.loss[-1] == pytest.approx(prob.best_loss, rel=1e-9)
    assert res.extra["error_bound_bytes"] <= 10**9


def test_max_points_error_suggests_a_resolution_that_works():
    prof = empas.synthetic_profile(60, seed=1)
    with pytest.raises(ValueError, match="max_points=10 .*resolution: the largest byte error"):
        empas.search(prof, method="exact", max_points=10)


# -- deep JSON nesting ------------------------------------------------------------------


def test_deeply_nested_json_is_a_format_error_not_recursion(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(FormatError, match="nested"):
        empas.Profile.from_json(deep)
    f = tmp_path / "deep.json"
    f.write_text('{"format": "empas.sensitivity/1", "model": ' + deep + "}")
    with pytest.raises(FormatError, match="nested"):
        empas.load_profile(f)
    with pytest.raises(FormatError, match="nested"):
        empas.load_plan(f)
    for cmd in (["search", str(f), "-o", str(tmp_path / "o")], ["info", str(f)]):
        r = _cli(*cmd)
        assert r.returncode == 2 and "nested" in r.stderr, (cmd, r.stderr[-1500:])
        assert "RecursionError" not in r.stderr and "Traceback" not in r.stderr
    nested: list = []
    for _ in range(5000):
        nested = [nested]
    with pytest.raises(FormatError, match="nested"):
        empas.Profile.from_dict({"format": "empas.sensitivity/1", "model": nested})


def test_profile_checkpoint_nested_too_deeply_is_a_format_error(tmp_path):
    from empas.profile.checkpoint import ProfileCheckpoint

    f = tmp_path / "ck.json"
    f.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FormatError, match="nested too deeply"):
        ProfileCheckpoint(f, {}).load()


# -- population x units memory, output directories ---------------------------------------


def test_population_times_units_is_refused_up_front_with_the_figure():
    n = 20_000
    limit = core().memory_limit_bytes()
    pop = 1_000_000
    if core().nsga2_memory_estimate(pop, n) <= limit:
        pytest.skip("this machine has the memory for the largest population")
    prof = empas.synthetic_profile(n, seed=1)
    with pytest.raises(ValueError, match=r"pop_size 1000000 x 20000 units needs about .* GiB"):
        empas.search(prof, pop_size=pop, generations=1)
    # the estimate scales with both factors
    assert core().nsga2_memory_estimate(200, 2 * n) > core().nsga2_memory_estimate(200, n)
    assert core().nsga2_memory_estimate(400, n) > core().nsga2_memory_estimate(200, n)


def test_existing_output_is_refused_before_the_search(small_profile_dict, tmp_path):
    prof = _write(tmp_path / "p.json", small_profile_dict)
    out = tmp_path / "out"
    (out / "plans").mkdir(parents=True)
    (out / "result.json").write_text("{}")
    ck = tmp_path / "ck.json"
    r = _cli("search", str(prof), "-o", str(out), "--pop-size", "8", "--generations", "3",
             "--checkpoint", str(ck))  # fmt: skip
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr, r.stderr
    assert not ck.exists(), "the search ran before the output was checked"
    assert (out / "result.json").read_text() == "{}"
    r = _cli("search", str(prof), "-o", str(out), "--pop-size", "8", "--generations", "3",
             "--force")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "result.json").read_text())["format"].startswith("empas.search")


# -- search checkpoints: generations validated ----------------------------------------


def test_resume_with_fewer_generations_is_an_error(tmp_path):
    prof = empas.synthetic_profile(20, seed=3)
    ck = tmp_path / "ck.json"
    empas.search(prof, pop_size=8, generations=6, checkpoint=ck, checkpoint_every=2)
    with pytest.raises(ValueError, match="at generation 6, past the 3 generations"):
        empas.search(prof, pop_size=8, generations=3, checkpoint=ck)
    # more generations continue the run
    res = empas.search(prof, pop_size=8, generations=8, checkpoint=ck)
    assert res.extra["resumed_from"] == 6 and res.extra["generations_run"] == 8


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(generation=-5), "generation must be an integer >= 0"),
        (lambda d: d.update(generation="3"), "generation must be an integer >= 0"),
        (lambda d: d.update(generation=2.5), "generation must be an integer >= 0"),
        (lambda d: d.update(evaluations=-1), "evaluations must be an integer >= 0"),
        (lambda d: d["history"].pop(), "history must list generations"),
        (lambda d: d.update(population=d["population"][:-1]), "population size differs"),
        (lambda d: d.update(population=[7] * len(d["population"])), "malformed"),
        (lambda d: d.pop("history"), "malformed"),
    ],
)
def test_hand_edited_search_checkpoint_is_a_format_error(tmp_path, edit, match):
    prof = empas.synthetic_profile(20, seed=3)
    ck = tmp_path / "ck.json"
    empas.search(prof, pop_size=8, generations=4, checkpoint=ck, checkpoint_every=2)
    d = json.loads(ck.read_text())
    edit(d)
    ck.write_text(json.dumps(d))
    with pytest.raises(FormatError, match=match):
        empas.search(prof, pop_size=8, generations=6, checkpoint=ck)


# -- atomic outputs ---------------------------------------------------------------------


def test_search_outputs_are_replaced_as_a_set(small_profile_dict, tmp_path, monkeypatch):
    prof = empas.Profile.from_dict(small_profile_dict)
    out = tmp_path / "out"
    first = empas.search(prof, method="exact")
    paths = first.save(out)
    before = {k: p.read_text() for k, p in paths.items()}
    second = empas.search(prof, pop_size=8, generations=2, seed=4)

    def boom(self, indent=2):
        raise RuntimeError("disk full")

    monkeypatch.setattr(empas.Plan, "to_json", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        second.save(out, overwrite=True)
    assert {k: p.read_text() for k, p in paths.items()} == before
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.undo()
    second.save(out, overwrite=True)
    assert json.loads(paths["result"].read_text())["config"]["method"] == "nsga2"


def test_verify_plot_is_written_atomically(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from empas.util.io import atomic_write_bytes

    target = tmp_path / "verify.png"
    target.write_bytes(b"old image")

    def half(f):
        f.write(b"\x89PNG partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, half)
    assert target.read_bytes() == b"old image"
    assert [p.name for p in tmp_path.iterdir()] == ["verify.png"]
    # and VerifyReport.save_plot goes through it: a failing savefig keeps the old file
    from empas.verify.report import VerifyReport

    calls = []
    orig = Figure.savefig

    def failing(self, fname, *a, **k):
        calls.append(fname)
        fname.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", failing)
    rep = VerifyReport.__new__(VerifyReport)
    monkeypatch.setattr(VerifyReport, "plot", lambda self: _axes())
    with pytest.raises(OSError, match="disk full"):
        rep.save_plot(target)
    assert calls and not isinstance(calls[0], (str, Path))  # a temp file object, not the path
    assert target.read_bytes() == b"old image"
    monkeypatch.setattr(Figure, "savefig", orig)
    rep.save_plot(target)
    assert target.read_bytes()[:4] == b"\x89PNG"


def _axes():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    return ax


def test_native_writer_leaves_no_temp_file(tmp_path):
    f = tmp_path / "x.json"
    core().write_file_atomic(str(f), "abc")
    core().write_file_atomic(str(f), "defg")
    assert f.read_text() == "defg"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
    with pytest.raises(ValueError, match="cannot open"):
        core().write_file_atomic(str(tmp_path / "missing" / "x.json"), "abc")


# -- plans must cover their profile ---------------------------------------------------


def _partial_plan(small_profile_dict):
    prof = empas.Profile.from_dict(small_profile_dict)
    plan = empas.search(prof, method="exact").archetypes["balanced"]
    d = plan.to_dict()
    assert d["provenance"]["profile"]["n_units"] == 4
    d["units"] = d["units"][1:]  # a valid plan with one unit removed
    return prof, plan, empas.Plan.from_dict(d)


def test_a_plan_missing_a_unit_is_refused_unless_allowed(small_profile_dict, tmp_path):
    """A plan with a unit removed exported a checkpoint 1 MB larger than its
    predicted size, with no warning: the missing unit silently stayed fp16."""
    from empas.errors import PlanMismatchError
    from empas.quant.apply import check_coverage

    prof, full, partial = _partial_plan(small_profile_dict)
    check_coverage(full)
    with pytest.raises(PlanMismatchError, match="names 3 units but was made from a profile of 4"):
        check_coverage(partial)
    with pytest.raises(PlanMismatchError, match="allow_partial"):
        empas.apply(object(), partial)
    with pytest.raises(PlanMismatchError, match="names 3 units"):
        empas.save_quantized(object(), partial, tmp_path / "ck")
    assert not (tmp_path / "ck").exists()
    # renamed units are caught by the names' hash
    d = full.to_dict()
    d["units"][0]["name"] = "renamed"
    with pytest.raises(PlanMismatchError, match="unit names differ"):
        check_coverage(empas.Plan.from_dict(d))
    # the profile itself refuses it for search/verify
    with pytest.raises(FormatError, match="b0"):
        prof.genome(partial)
    # CLI: exit 2, and --allow-partial lets it through
    f = tmp_path / "partial.json"
    partial.save(f)
    r = _cli("export", str(f), "--format", "plan", "-o", str(tmp_path / "out.json"))
    assert r.returncode == 2 and "names 3 units" in r.stderr, r.stderr
    r = _cli("export", str(f), "--format", "plan", "-o", str(tmp_path / "out.json"),
             "--allow-partial")  # fmt: skip
    assert r.returncode == 0, r.stderr


# -- packed checkpoint manifests --------------------------------------------------------


def _fake_checkpoint(tmp_path, **changes):
    """A checkpoint directory whose manifest is valid up to ``changes``; the
    weights are a few bytes (the manifest is checked before they are read)."""
    from empas.util.io import sha256_file

    d = tmp_path / "ck"
    d.mkdir(exist_ok=True)
    w = d / "model.safetensors"
    w.write_bytes(b"\x00" * 64)
    m = {
        "format": "empas.quantized/1",
        "model_class": "LlamaForCausalLM",
        "plan": {"format": "empas.plan/1", "units": []},
        "modules": {
            "model.layers.0.mlp.up_proj": {
                "kind": "packed", "bits": 4, "group_size": 32, "symmetric": True,
                "in_features": 64, "out_features": 176, "bias": None,
            },
            "model.layers.0.mlp.down_proj": {
                "kind": "fp16", "in_features": 176, "out_features": 64, "bias": None,
            },
        },
        "dropped_blocks": [],
        "tied": {},
        "files": {"model.safetensors": {"bytes": 64, "sha256": sha256_file(w)}},
    }  # fmt: skip
    for k, v in changes.items():
        if v is _DROP:
            m.pop(k)
        else:
            m[k] = v
    (d / "empas_quantized.json").write_text(json.dumps(m))
    return d, m


_DROP = object()
_PACKED = {"kind": "packed", "bits": 4, "group_size": 32, "symmetric": True,
           "in_features": 64, "out_features": 8, "bias": None}  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"modules": ["model.layers.0.mlp.up_proj"]}, "modules must be an object"),
        ({"modules": {"m": {**_PACKED, "bits": None}}}, r"modules\['m'\].bits must be an integer"),
        ({"modules": {"m": {k: v for k, v in _PACKED.items() if k != "bits"}}}, "missing 'bits'"),
        ({"modules": {"m": {**_PACKED, "bits": 16}}}, r"bits must be an integer in \[2, 8\]"),
        ({"modules": {"m": {**_PACKED, "kind": "int4"}}}, "kind must be one of 'packed', 'fp16'"),
        ({"modules": {"m": {**_PACKED, "in_features": -3}}}, "in_features must be an integer"),
        ({"modules": {"m": {**_PACKED, "symmetric": "yes"}}}, "symmetric must be true or false"),
        ({"modules": {"m": {**_PACKED, "bias": "int"}}}, "bias must be null or one of"),
        ({"modules": {"m": 3}}, r"modules\['m'\] must be an object"),
        ({"files": None}, "files must be an object"),
        ({"files": {}}, r"files\['model.safetensors'\] must be an object"),
        ({"files": {"model.safetensors": {"bytes": "64"}}}, "bytes must be an integer"),
        ({"files": {"model.safetensors": {"sha256": "xyz"}}}, "sha256 must be 64 lowercase hex"),
        ({"dropped_blocks": "model.layers.1"}, "dropped_blocks must be a list"),
        ({"dropped_blocks": ["layers"]}, "dropped_blocks must be a list"),
        ({"tied": ["a", "b"]}, "tied must be an object"),
        ({"plan": []}, "plan must be an object"),
        ({"model_class": 3}, "model_class must be a class name"),
        ({"model_class": "os.system"}, "model_class must be a class name"),
        ({"modules": _DROP}, "missing field 'modules'"),
    ],
)
def test_malformed_manifests_are_checkpoint_errors(tmp_path, changes, match):
    """modules as a list, bits missing or files: null raised AttributeError/KeyError."""
    from empas.errors import CheckpointError

    d, _ = _fake_checkpoint(tmp_path, **changes)
    with pytest.raises(CheckpointError, match=match):
        empas.quant.read_manifest(d)
    with pytest.raises(CheckpointError, match=match):
        empas.load_quantized(d)


def test_a_manifest_without_sha256_is_refused_unless_unverified(tmp_path):
    """A flipped byte plus a manifest without sha256 loaded garbage weights silently."""
    from empas.errors import CheckpointError

    d, m = _fake_checkpoint(tmp_path)
    (d / "model.safetensors").write_bytes(b"\x01" + b"\x00" * 63)  # a flipped byte
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        empas.load_quantized(d)
    del m["files"]["model.safetensors"]["sha256"]
    (d / "empas_quantized.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="has no sha256.*verify_hash=False"):
        empas.load_quantized(d)
    # unverified: the manifest passes, the (fake) weights then fail to load, clearly
    with pytest.raises(CheckpointError):
        empas.load_quantized(d, verify_hash=False)


def test_deeply_nested_manifest_is_a_checkpoint_error(tmp_path):
    from empas.errors import CheckpointError

    d, _ = _fake_checkpoint(tmp_path)
    (d / "empas_quantized.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        empas.quant.read_manifest(d)


@pytest.mark.parametrize(
    "doc",
    [
        {"done": [1, 2]},
        {"done": {"u@4": "x"}},
        {"done": {"u@4": [1.0, None]}},
        {"done": {"u@4": [True]}},
        {"key": [], "done": {}},
    ],
)
def test_hand_edited_profile_checkpoint_is_a_format_error(tmp_path, doc):
    from empas.profile.checkpoint import CHECKPOINT_FORMAT, ProfileCheckpoint

    f = tmp_path / "ck.json"
    f.write_text(json.dumps({"format": CHECKPOINT_FORMAT, "key": {}, **doc}))
    with pytest.raises(FormatError, match="checkpoint"):
        ProfileCheckpoint(f, {}).load()
