"""scripts/gpu_check.sh and benchmarks/compare_profiles.py (issue 16), cheaply:
the script parses, and the comparison passes identical tables, fails a table
moved by more than its stderr, and refuses tables of other units."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import empas

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))
import compare_profiles  # noqa: E402


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    if shutil.which("shellcheck"):
        r = subprocess.run(
            ["shellcheck", "-S", "warning", str(SCRIPT)], capture_output=True, text=True
        )
        assert r.returncode == 0, r.stdout


def _moved(profile_dict, factor: float) -> dict:
    """The same table with one cell moved by ``factor`` times its stderr."""
    d = copy.deepcopy(profile_dict)
    d["delta"][1][0] = d["delta"][1][0] + factor * d["stderr"][1][0]
    return d


def test_compare_profiles(small_profile_dict, tmp_path, capsys):
    doc = dict(small_profile_dict)
    doc["stderr"] = [[0.01 / (i + 1), 0.002, 0.0005, 0.0] for i in range(4)]
    a = tmp_path / "a.json"
    a.write_text(json.dumps(doc))
    prof = empas.load_profile(a)
    # identical tables: ratio 0, pass
    out = tmp_path / "same.json"
    assert compare_profiles.main([str(a), str(a), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["pass"] and res["max_ratio"] == 0.0 and res["cells_compared"] == 16
    # within the stderr (half of it): pass, ratio 0.5
    b = tmp_path / "b.json"
    b.write_text(json.dumps(_moved(doc, 0.5)))
    assert compare_profiles.main([str(b), str(a), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["max_ratio"] == pytest.approx(0.5, rel=1e-6)
    # three stderrs off: fail (exit 1), the cell named
    c = tmp_path / "c.json"
    c.write_text(json.dumps(_moved(doc, 3.0)))
    assert compare_profiles.main([str(c), str(a), "--json", str(out)]) == 1
    res = json.loads(out.read_text())
    assert not res["pass"] and res["max_ratio"] == pytest.approx(3.0, rel=1e-6)
    assert res["worst"][0]["unit"] == prof.unit_names[1]
    assert res["worst"][0]["bits"] == prof.choices[0]
    assert "FAIL" in capsys.readouterr().out
    # other units: cannot be compared (exit 2, said why)
    d = json.loads(json.dumps(doc))
    d["units"][0]["name"] = "renamed"
    e = tmp_path / "e.json"
    e.write_text(json.dumps(d))
    assert compare_profiles.main([str(e), str(a)]) == 2
    assert "different units" in capsys.readouterr().err
    assert compare_profiles.main([str(a), str(a), "--threshold", "0"]) == 2


def test_compare_zero_stderr_cells_must_agree():
    from types import SimpleNamespace

    def prof(delta):
        return SimpleNamespace(
            unit_names=["a", "b"], choices=[2, 16], baseline=1.0, meta={},
            delta=np.array(delta), stderr=np.zeros((2, 2)),
        )  # fmt: skip

    same = [[0.5, 0.0], [0.25, 0.0]]
    assert compare_profiles.compare(prof(same), prof(same))["max_ratio"] == 0.0
    res = compare_profiles.compare(prof(same), prof([[0.5, 0.0], [0.251, 0.0]]))
    assert res["zero_stderr_mismatches"] == 1 and res["max_ratio"] == np.inf
    assert res["worst"][0]["unit"] == "b" and res["worst"][0]["bits"] == 2
