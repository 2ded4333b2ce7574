"""The package layout (issue 12): stage folders, one config object per step, the
format classes loading their own files, old import paths, no private reach-ins."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
import warnings
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

import empas
from empas.search import SearchResult
from empas.verify import VerifyReport

PKG = Path(empas.__file__).resolve().parent


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def test_no_module_imports_another_modules_private_names():
    """`from X import _name` across modules of empas is how private helpers became a
    toolbox (apply importing profiling._find_blocks); none is left."""
    bad = []
    for module, path in _modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(module, path.name == "__init__.py", node)
                if not target.startswith("empas") or target == module:
                    continue
                for alias in node.names:
                    private = alias.name.startswith("_") and not alias.name.startswith("__")
                    # a private *module* (empas._native, empas.verify._memprobe) may be imported
                    is_module = (
                        PKG.parent / target.replace(".", "/") / f"{alias.name}.py"
                    ).is_file()
                    if private and not is_module:
                        bad.append(f"{module}: from {target} import {alias.name}")
    assert bad == []


def test_stage_folders_hold_the_pipeline():
    for stage in ("profile", "quant", "search", "verify", "serve", "dashboard", "models", "util"):
        assert (PKG / stage / "__init__.py").is_file(), stage
    # nothing pipeline-specific is left side by side at the top level
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert top == [
        "__init__.py",
        "__main__.py",
        "_compat.py",
        "_native.py",
        "demo.py",
        "errors.py",
        "export.py",
        "plan.py",
    ]


def test_public_api_names_are_functions_not_modules():
    """empas.profile, .search, .verify and .apply are the functions even though
    packages/modules of those names exist (importing them must not rebind)."""
    import empas.profile.session  # noqa: F401
    import empas.quant.apply  # noqa: F401
    import empas.search.run  # noqa: F401
    import empas.verify.run  # noqa: F401

    for name in ("profile", "search", "verify", "apply"):
        assert callable(getattr(empas, name)) and not isinstance(getattr(empas, name), type(sys)), (
            name
        )


@pytest.mark.parametrize(
    "old, name, new",
    [
        ("empas.profiling", "profile", empas.profile),
        ("empas.profiling", "StaleCheckpointError", empas.StaleCheckpointError),
        ("empas.sensitivity", "Profile", empas.Profile),
        ("empas.apply", "PlanMismatchError", empas.PlanMismatchError),
        ("empas.checkpoint", "save_quantized", empas.save_quantized),
        ("empas.qformats", "int_format", None),
        ("empas.sizes", "parse_size", empas.parse_size),
        ("empas.synthetic", "synthetic_profile", empas.synthetic_profile),
    ],
)
def test_old_import_paths_keep_working_with_a_warning(old, name, new):
    mod = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=f"{old} has moved: import {name} from empas"):
        obj = getattr(mod, name)
    if new is not None:
        assert obj is new
    assert callable(empas.apply) and callable(empas.profile)  # not rebound by the import


def test_old_private_names_fail_naming_the_new_place():
    mod = importlib.import_module("empas.profiling")
    with pytest.raises(ImportError, match=r"empas\.profiling\._Runner is gone: .*empas\.profile"):
        mod._Runner  # noqa: B018
    code = "from empas.profiling import _load"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1 and "moved to empas.profile" in done.stderr


def test_python_m_empas_runs_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "empas", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == f"empas {empas.__version__}"


# -- one config object per step -------------------------------------------------------


def test_quant_config_is_frozen_validated_and_round_trips():
    q = empas.QuantConfig(group_size=64, symmetric=False)
    with pytest.raises(FrozenInstanceError):
        q.group_size = 32  # type: ignore[misc]
    assert empas.QuantConfig.from_json(q.to_json()) == q
    assert empas.QuantConfig(group_size=-1).group_size == 0  # -1 = per channel, as before
    assert q.format(4).bits_per_weight() == 4 + 8 * 3 / 64
    for bad in (12.5, True, -2):
        with pytest.raises(ValueError, match="group_size"):
            empas.QuantConfig(group_size=bad)
    with pytest.raises(empas.FormatError, match="params_bits"):
        empas.QuantConfig.from_json({"bytes_model": "params_bits"})


def test_the_profile_quantizer_record_is_quant_config_json(small_profile_dict):
    prof = empas.Profile.from_dict(small_profile_dict)
    q = empas.QuantConfig.from_json(prof.quantizer)
    assert q.to_json() == prof.quantizer


def test_profile_config_normalizes_and_validates():
    c = empas.ProfileConfig(choices=[8, 2, 4, 2])
    assert c.choices == (2, 4, 8, 16)
    assert c.quant == empas.QuantConfig()
    with pytest.raises(ValueError, match="choice 0"):
        empas.ProfileConfig(units="sublayer", choices=[0, 4])
    with pytest.raises(ValueError, match="batch_size"):
        empas.ProfileConfig(batch_size=0)
    with pytest.raises(ValueError, match="loss must be one of"):
        empas.ProfileConfig(loss="mse")


def test_config_and_differing_keywords_are_refused(tiny_model_path, calib_texts):
    cfg = empas.ProfileConfig(choices=[4])
    with pytest.raises(ValueError, match="either in config= or as keywords.*seed"):
        empas.profile(tiny_model_path, calib_texts, seed=3, config=cfg)
    with pytest.raises(ValueError, match="either in config= or as keywords.*mode"):
        empas.verify(tiny_model_path, None, calib_texts, mode="fake", config=empas.VerifyConfig())


def test_verify_config_validates():
    with pytest.raises(ValueError, match="mode must be one of"):
        empas.VerifyConfig(mode="int4")
    with pytest.raises(ValueError, match="verify measures loss"):
        empas.VerifyConfig(loss="kl")
    with pytest.raises(ValueError, match="baseline bit width 9"):
        empas.VerifyConfig(baselines=(16, 9))
    assert empas.VerifyConfig(baselines=[4, 16]).baselines == (4, 16)


# -- formats loadable from their own classes ------------------------------------------


@pytest.fixture(scope="module")
def tiny_result():
    prof = empas.load_profile("example:tinyllama")
    return prof, empas.search(prof, method="nsga2", pop_size=16, generations=5, max_bytes="700MB")


def test_search_result_load_round_trips_with_its_profile(tiny_result, tmp_path):
    prof, res = tiny_result
    res.save(tmp_path)
    back = SearchResult.load(tmp_path)  # the directory; the example profile is found
    assert back.profile is not None and back.profile.fingerprint == prof.fingerprint
    assert back.to_dict() == json.loads(res.to_json())
    assert back.front[3] == res.front[3] and back.front.bits(3) == res.front.bits(3)
    assert set(back.archetypes) == set(res.archetypes) >= {"balanced", "best_under_budget"}
    assert back.compare_uniform() == res.compare_uniform()
    assert back.best_under("650MB").bits == res.best_under("650MB").bits


def test_search_result_load_without_its_profile(tiny_result, tmp_path):
    prof, res = tiny_result
    doc = json.loads(res.to_json())
    doc["profile"]["path"] = str(tmp_path / "gone.json")
    (tmp_path / "result.json").write_text(json.dumps(doc))
    back = SearchResult.load(tmp_path / "result.json")
    assert back.profile is None
    p, q = back.front[2], res.front[2]
    assert p.bits == q.bits and p.predicted_bytes == q.predicted_bytes
    assert p.predicted_loss == pytest.approx(q.predicted_loss, rel=1e-12)
    assert back.hypervolume == pytest.approx(res.hypervolume, rel=1e-12)
    with pytest.raises(ValueError, match="needs the profile"):
        back.compare_uniform()


def test_search_result_load_errors_name_file_and_field(tiny_result, tmp_path):
    _, res = tiny_result
    doc = json.loads(res.to_json())
    doc["front"]["bits"][1] = [4]
    f = tmp_path / "result.json"
    f.write_text(json.dumps(doc))
    with pytest.raises(empas.FormatError, match=r"result\.json: front\.bits\[1\] must list 22"):
        SearchResult.load(f)
    f.write_text("{")
    with pytest.raises(empas.FormatError, match="malformed JSON in search result"):
        SearchResult.load(f)
    other = empas.synthetic_profile(22, seed=1)
    f.write_text(res.to_json())
    with pytest.raises(empas.FormatError, match="the profile is not this result's"):
        SearchResult.load(f, profile=other)


def _verify_doc():
    return {
        "format": "empas.verify/1",
        "meta": {"loss": "causal_lm"},
        "rows": [
            {"name": "original", "kind": "original", "loss": 2.0, "bytes": 10},
            {"name": "uniform-fp16", "kind": "uniform", "loss": 2.0, "bytes": 8, "bits": [16]},
            {"name": "uniform-int4", "kind": "uniform", "loss": 2.4, "bytes": 4, "bits": [4]},
            {"name": "best_under_int4", "kind": "plan", "loss": 2.1, "bytes": 4, "bits": [4]},
        ],
        "fidelity": {"spearman": 0.9},
    }


def test_verify_report_save_load_round_trip(tmp_path):
    rep = VerifyReport.from_dict(_verify_doc())
    assert rep.honesty_check["beats_int4"] is True
    assert rep.honesty_check["recovered"] == pytest.approx(0.75)
    path = rep.save(tmp_path / "v.json")
    back = VerifyReport.load(path)
    assert back.rows == rep.rows and back.extra["fidelity"] == {"spearman": 0.9}
    assert json.loads(path.read_text())["honesty"]["plan"] == "best_under_int4"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(format="empas.verify/2"), "not an EMPAS verify report"),
        (lambda d: d.update(rows=[]), "'rows' must be a non-empty list"),
        (lambda d: d["rows"][1].update(loss="x"), "row 'uniform-fp16' has no numeric 'loss'"),
        (lambda d: d["rows"][2].update(bits=[4.0]), "'bits' must be a list of integers"),
    ],
)
def test_verify_report_load_errors(tmp_path, change, message):
    doc = _verify_doc()
    change(doc)
    f = tmp_path / "verify.json"
    f.write_text(json.dumps(doc))
    with pytest.raises(empas.FormatError, match=message):
        VerifyReport.load(f)


def test_saving_needs_no_compiled_extension(tmp_path):
    """Plans and reports are written in pure Python (util.io), not by empas._core."""
    code = (
        "import sys, json\n"
        "sys.modules['empas._core'] = None\n"  # any import of the extension fails
        "from empas.plan import Plan\n"
        "from empas.verify.report import VerifyReport\n"
        "p = Plan({'format': 'empas.plan/1', 'units': [{'name': 'a', 'bits': 4}]})\n"
        f"p.save({str(tmp_path / 'p.json')!r})\n"
        f"VerifyReport.from_dict(json.loads({json.dumps(json.dumps(_verify_doc()))}))"
        f".save({str(tmp_path / 'v.json')!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "p.json").read_text())["units"][0]["bits"] == 4
    assert json.loads((tmp_path / "v.json").read_text())["format"] == "empas.verify/1"


# -- one of each ---------------------------------------------------------------------


def test_atomic_write_leaves_no_temp_file_and_replaces(tmp_path):
    from empas.util.io import atomic_write_text

    f = tmp_path / "sub" / "a.txt"
    atomic_write_text(f, "one")
    atomic_write_text(f, "two")
    assert f.read_text() == "two" and sorted(p.name for p in f.parent.iterdir()) == ["a.txt"]


def test_progress_bar_is_silent_without_tqdm(monkeypatch):
    from empas.util.progress import progress_bar

    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    bar = progress_bar(3, "x", "it")
    bar.update(2)
    bar.set_postfix(a=1)
    bar.close()
    assert bar.n == 2
    # search(progress=True) used to raise ImportError without tqdm; now it is silent
    res = empas.search(empas.synthetic_profile(8, seed=0), pop_size=8, generations=2, progress=True)
    assert len(res.front) > 0


def test_rank_statistics_have_one_home():
    from empas.util.stats import kendall_tau, spearman

    vmod = importlib.import_module("empas.verify")
    assert vmod.spearman is spearman and vmod.kendall_tau is kendall_tau
    assert spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = empas.synthetic_profile(6, seed=1)
        assert empas.rank_correlation(a, a) == pytest.approx(1.0)


def test_best_under_uniform_is_labelled_and_fits(tiny_result):
    from empas.verify import best_under_uniform, uniform_plan

    prof, res = tiny_result
    best = best_under_uniform(res, prof, 4)
    assert best.archetype == "best_under_int4"
    assert best.predicted_bytes <= uniform_plan(prof, 4).predicted_bytes
    assert best_under_uniform(res, prof, 3) is None  # the profile has no 3-bit choice
