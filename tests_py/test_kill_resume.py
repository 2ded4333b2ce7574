"""Real kill tests: ``empas search --checkpoint`` and ``empas profile --checkpoint``
run as subprocesses, killed with SIGKILL mid-run (no handler, no cleanup), rerun
with the same command, and compared with an uninterrupted run: identical."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import empas

from .subproc_util import child_env

ROOT = Path(__file__).resolve().parents[1]


_env = child_env


def _run(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "empas", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )


def _kill_when(args: list[str], ready, timeout: float = 300) -> None:
    """Starts ``empas args`` and SIGKILLs it as soon as ``ready()`` holds; fails if
    the process ends first (nothing would have been interrupted)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "empas", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    t0 = time.monotonic()
    try:
        while not ready():
            if proc.poll() is not None:
                err = proc.stderr.read().decode()[-2000:]
                pytest.fail(
                    f"the run ended (rc {proc.returncode}) before it could be killed: {err}"
                )
            if time.monotonic() - t0 > timeout:
                pytest.fail("the checkpoint never appeared")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _checkpoint_generation(path: Path) -> int:
    try:
        return int(json.loads(path.read_text())["generation"])
    except (OSError, ValueError, KeyError):
        return -1  # not there yet (it is written atomically, never half)


def test_search_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path):
    prof = tmp_path / "profile.json"
    empas.synthetic_profile(1500, seed=4).save(prof)
    common = ["search", str(prof), "--pop-size", "48", "--generations", "200", "--seed", "7",
              "--threads", "2"]  # fmt: skip
    full = _run([*common, "-o", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr

    ck = tmp_path / "ck.json"
    out = tmp_path / "killed"
    _kill_when([*common, "-o", str(out), "--checkpoint", str(ck)],
               lambda: 0 < _checkpoint_generation(ck) < 200)  # fmt: skip
    at = _checkpoint_generation(ck)
    assert 0 < at < 200 and not (out / "result.json").exists()
    again = _run([*common, "-o", str(out), "--checkpoint", str(ck)])
    assert again.returncode == 0, again.stderr

    assert (out / "front.csv").read_text() == (tmp_path / "full" / "front.csv").read_text()
    a = json.loads((out / "result.json").read_text())
    b = json.loads((tmp_path / "full" / "result.json").read_text())
    assert a["extra"]["resumed_from"] == at and b["extra"]["resumed_from"] == -1
    assert a["front"] == b["front"] and a["hypervolume"] == b["hypervolume"]
    assert a["evaluations"] == b["evaluations"]
    # wall time differs; the rest of every generation's record is identical
    ha = [{k: v for k, v in h.items() if k != "seconds"} for h in a["history"]]
    hb = [{k: v for k, v in h.items() if k != "seconds"} for h in b["history"]]
    assert ha == hb and len(ha) == 201
    for f in (tmp_path / "full" / "plans").glob("*.json"):
        pa = json.loads((out / "plans" / f.name).read_text())
        pb = json.loads(f.read_text())
        assert pa["units"] == pb["units"] and pa["predicted"] == pb["predicted"]


@pytest.mark.slow
def test_profile_killed_mid_run_resumes_to_the_uninterrupted_profile(
    tiny_model_path, calib_texts, tmp_path
):
    calib = tmp_path / "calib.txt"
    calib.write_text("\n\n".join(calib_texts))
    common = ["profile", str(tiny_model_path), "--calib", str(calib), "--units", "sublayer",
              "--bits", "2,4,8", "--n-tokens", "512", "--seq-len", "64", "--batch-size", "8",
              "--quiet"]  # fmt: skip
    full = _run([*common, "-o", str(tmp_path / "full.json")])
    assert full.returncode == 0, full.stderr

    ck = tmp_path / "ck.json"

    def some_done() -> bool:
        try:
            return len(json.loads(ck.read_text())["done"]) >= 2
        except (OSError, ValueError, KeyError):
            return False

    _kill_when([*common, "-o", str(tmp_path / "killed.json"), "--checkpoint", str(ck)], some_done)
    done = json.loads(ck.read_text())["done"]
    assert len(done) >= 2 and not (tmp_path / "killed.json").exists()
    again = _run([*common, "-o", str(tmp_path / "killed.json"), "--checkpoint", str(ck)])
    assert again.returncode == 0, again.stderr

    a = empas.load_profile(tmp_path / "killed.json")
    b = empas.load_profile(tmp_path / "full.json")
    assert a.unit_names == b.unit_names and a.choices == b.choices
    assert a.baseline == b.baseline
    assert a.delta.tolist() == b.delta.tolist()  # bit-identical measurements
    assert a.fingerprint == b.fingerprint
