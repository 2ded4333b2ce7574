"""The command line, in-process and as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import empas
from empas.cli import main

from .conftest import ORIGINAL_PLANS


def test_search_writes_outputs_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["search", "example:tinyllama", "-o", str(out), "--method", "exact"]) == 0
    assert "balanced" in capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    assert result["exact"] and len(result["front"]["bits"]) == 55
    plan = empas.load_plan(out / "plans" / "balanced.json")
    assert plan.archetype == "balanced"
    before = (out / "result.json").read_text()
    assert main(["search", "example:tinyllama", "-o", str(out), "--method", "exact"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "result.json").read_text() == before
    assert (
        main(["search", "example:tinyllama", "-o", str(out), "--force", "--budget", "600MB"]) == 0
    )
    assert (out / "plans" / "best_under_budget.json").exists()


def test_bad_inputs_exit_2(tmp_path, capsys):
    assert main(["search", str(tmp_path / "missing.json"), "-o", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["search", "example:tinyllama", "-o", str(tmp_path / "o"), "--budget", "1MB"]) == 2
    assert "smallest reachable size" in capsys.readouterr().err
    assert main(["search", "example:tinyllama", "-o", str(tmp_path / "o"), "--pin", "layer_0"]) == 2
    assert "UNIT=BITS" in capsys.readouterr().err


def test_info(capsys):
    assert main(["info", "example:tinyllama"]) == 0
    assert "layer_21" in capsys.readouterr().out
    assert main(["info", str(ORIGINAL_PLANS / "balanced.json")]) == 0
    assert "balanced" in capsys.readouterr().out


def test_cli_as_a_subprocess(tmp_path):
    env = dict(os.environ)
    pkg_root = str(Path(empas.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "empas.cli", "search", "example:tinyllama", "-o", str(tmp_path)]
    done = subprocess.run(
        cmd + ["--seed", "3"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "nsga2 search" in done.stdout
    bad = subprocess.run(
        cmd + ["--pop-size", "2"], env=env, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "pop_size" in bad.stderr
    usage = subprocess.run(
        cmd[:3] + ["frobnicate"], env=env, capture_output=True, text=True, timeout=120
    )
    assert usage.returncode == 2
