"""The command line, in-process and as a real subprocess."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import empas
from empas.cli import main


def _files(root: Path) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_search_writes_outputs_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["search", "example:tinyllama", "-o", str(out), "--method", "exact"]) == 0
    stdout = capsys.readouterr().out
    assert "exact search" in stdout and "balanced" in stdout and "wrote" in stdout
    result = json.loads((out / "result.json").read_text())
    assert result["format"] == "empas.search/1"
    assert result["exact"] and len(result["front"]["bits"]) == 55
    rows = list(csv.DictReader((out / "front.csv").read_text().splitlines()))
    assert len(rows) == 55
    assert [int(r["predicted_bytes"]) for r in rows] == result["front"]["bytes"]
    assert sorted(p.name for p in (out / "plans").iterdir()) == [
        "balanced.json",
        "max_accuracy.json",
        "max_compression.json",
    ]
    plan = empas.load_plan(out / "plans" / "balanced.json")
    assert plan.archetype == "balanced"
    ref = empas.search("example:tinyllama", method="exact").archetypes["balanced"]
    assert plan.bits == ref.bits and plan.predicted_loss == ref.predicted_loss

    before = _files(out)
    assert main(["search", "example:tinyllama", "-o", str(out), "--method", "exact"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("empas search: error: refusing to overwrite")
    assert "--force" in captured.err
    assert captured.out == ""
    assert _files(out) == before  # untouched: same bytes, same mtimes, nothing added

    assert (
        main(["search", "example:tinyllama", "-o", str(out), "--force", "--budget", "600MB"]) == 0
    )
    best = empas.load_plan(out / "plans" / "best_under_budget.json")
    assert best.predicted_bytes <= 600_000_000
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["method"] == "nsga2"
    assert result["config"]["max_bytes"] == 600_000_000
    assert max(result["front"]["bytes"]) <= 600_000_000


def test_search_options(tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["search", "example:tinyllama", "-o", str(out), "--pop-size", "16"]
    argv += ["--generations", "5", "--seed", "7", "--threads", "1", "--bits", "2,4,8"]
    argv += ["--pin", "layer_0=8", "--checkpoint", str(tmp_path / "ck.json")]
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["seed"] == 7 and result["config"]["pop_size"] == 16
    assert len(result["history"]) == 6
    for bits in result["front"]["bits"]:
        assert bits[0] == 8 and set(bits) <= {2, 4, 8}
    assert (tmp_path / "ck.json").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--budget", "1MB"], "smallest reachable size of 242221056"),
        (["--budget", "lots"], "invalid size 'lots'"),
        (["--pin", "layer_0"], "UNIT=BITS"),
        (["--pin", "layer_0=3"], "pinned unit 'layer_0': 3 bits"),
        (["--bits", "2,four"], "--bits expects"),
        (["--pop-size", "2"], "pop_size"),
        (["--generations", "0"], "generations"),
        (["--threads", "0"], "threads"),
    ],
)
def test_bad_search_inputs_exit_2(tmp_path, capsys, extra, message):
    out = tmp_path / "o"
    assert main(["search", "example:tinyllama", "-o", str(out), *extra]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("empas search: error: ")
    assert message in captured.err
    assert not out.exists()


def test_bad_files_exit_2(tmp_path, capsys):
    missing = tmp_path / "missing.json"
    assert main(["search", str(missing), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "profile file not found" in err and str(missing) in err
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": ')
    assert main(["search", str(bad), "-o", str(tmp_path / "o")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    # An output "directory" that is a file: a clear error, not a traceback.
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["search", "example:tinyllama", "-o", str(afile), "--method", "exact"]) == 2
    assert "empas search: error:" in capsys.readouterr().err
    assert afile.read_text() == "x"


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["search"])
    assert info.value.code == 2
    assert "required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["search", "example:tinyllama", "-o", "x", "--method", "random"])
    assert info.value.code == 2


def test_info(tmp_path, capsys, original_plan_paths, original_profile_path):
    assert main(["info", "example:tinyllama"]) == 0
    out = capsys.readouterr().out
    assert "TinyLlama/TinyLlama-1.1B-Chat-v1.0" in out and "layer_21" in out
    assert main(["info", str(original_profile_path)]) == 0
    assert "units=22" in capsys.readouterr().out
    assert main(["info", str(original_plan_paths["balanced"])]) == 0
    out = capsys.readouterr().out
    assert "balanced" in out and "loss=3.3804" in out
    assert "bits: 4 4 4 4 4 4 4 8 4 4 4 4 8" in out
    # An empas.plan/1 file written by a search.
    res = empas.search("example:tinyllama", method="exact")
    path = res.archetypes["max_compression"].save(tmp_path / "mc.json")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "max_compression" in out and "bits: " + " ".join(["2"] * 22) in out


def test_info_bad_inputs(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope.json")]) == 2
    assert "nope.json" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": ')
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "not valid JSON" in err
    assert main(["info", str(tmp_path)]) == 2  # a directory
    assert "empas info: error:" in capsys.readouterr().err


def test_cli_as_a_subprocess(tmp_path):
    env = dict(os.environ)
    pkg_root = str(Path(empas.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "empas.cli", "search", "example:tinyllama", "-o", str(out)]

    def run(args):
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)

    done = run(cmd + ["--seed", "3", "--budget", "700MB"])
    assert done.returncode == 0, done.stderr
    assert "nsga2 search" in done.stdout
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["seed"] == 3 and max(result["front"]["bytes"]) <= 700_000_000
    assert (out / "plans" / "best_under_budget.json").exists()
    again = run(cmd + ["--seed", "3"])
    assert again.returncode == 2 and "--force" in again.stderr
    bad = run(cmd + ["--pop-size", "2", "--force"])
    assert bad.returncode == 2 and "pop_size" in bad.stderr
    assert "Traceback" not in bad.stderr
    usage = run(cmd[:3] + ["frobnicate"])
    assert usage.returncode == 2 and "invalid choice" in usage.stderr
