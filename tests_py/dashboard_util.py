"""A real `empas dashboard` process for the tests (signals, the browser tests), and a
verify.json fixture."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import empas

MEASURED_OFFSET = 0.01  # fixture: "measured" Δloss = predicted Δloss + this (not measured)
ORIGINAL_LOSS = 2.0  # fixture: held-out loss of the "original" model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """Child process ids of ``pid`` (Linux /proc; empty elsewhere)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not sys.platform.startswith("linux")
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


class Dashboard:
    """``python -m empas dashboard RESULTS --port PORT`` until :meth:`stop`."""

    def __init__(self, results, port: int | None = None, *extra: str, log: Path | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "empas", "dashboard", str(results), "--port", str(self.port)]
        self.log = open(log, "wb") if log is not None else subprocess.DEVNULL
        # a session of its own: signals sent here reach the launcher only
        self.proc = subprocess.Popen(
            [*cmd, *extra],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_healthy(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"empas dashboard exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"empas dashboard did not answer on {self.url} in {timeout} s")

    def server_pids(self) -> list[int]:
        return children(self.proc.pid)

    def signal_stop(self) -> None:
        """Sends SIGTERM to the launcher (:meth:`stop` then waits)."""
        self._servers = self.server_pids()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)

    def stop(self) -> None:
        """Stops the launcher and its server whatever state they are in."""
        pids = self.server_pids() or getattr(self, "_servers", [])
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in pids:  # never leave a server behind, even when the test failed
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.log is not subprocess.DEVNULL:
            self.log.close()

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def verify_row(name: str, kind: str, plan: empas.Plan, prof: empas.Profile) -> dict:
    pred_delta = plan.predicted_loss - prof.baseline
    delta = pred_delta + MEASURED_OFFSET
    return {
        "name": name,
        "kind": kind,
        "loss": ORIGINAL_LOSS + delta,
        "ppl": math.exp(ORIGINAL_LOSS + delta),
        "bytes": plan.predicted_bytes,
        "delta": delta,
        "avg_bits": plan.predicted_avg_bits,
        "pred_loss": plan.predicted_loss,
        "pred_bytes": plan.predicted_bytes,
        "pred_delta": pred_delta,
        "error": delta - pred_delta,
        "bits": plan.bits,
        "rss_mb": None,
        "gpu_mb": None,
    }


def write_verify(path: Path, prof: empas.Profile, res: empas.SearchResult) -> dict:
    """A verify.json in the real ``empas.verify/1`` format whose rows are real plans of
    ``res``; their *measured* numbers are synthetic (predicted Δloss + MEASURED_OFFSET)."""
    n = prof.n_units
    fp16 = prof.plan([16] * n)
    rows = [
        {
            "name": "original",
            "kind": "original",
            "loss": ORIGINAL_LOSS,
            "ppl": math.exp(ORIGINAL_LOSS),
            "bytes": fp16.predicted_bytes,
            "delta": 0.0,
        }
    ]
    names = {16: "fp16", 8: "int8", 4: "int4", 2: "int2"}
    for b in (16, 8, 4, 2):
        rows.append(verify_row(f"uniform-{names[b]}", "uniform", prof.plan([b] * n), prof))
    i4 = prof.plan([4] * n)
    rows.append(verify_row("best_under_int4", "plan", res.best_under(i4.predicted_bytes), prof))
    for name, p in res.archetypes.items():
        rows.append(verify_row(name, "plan", p, prof))
    alternating = prof.plan([2 if u % 2 else 16 for u in range(n)])  # dominated: off the front
    rows.append(verify_row("random-0", "random", alternating, prof))
    doc = {
        "format": "empas.verify/1",
        "meta": {
            "model": prof.model_name,
            "loss": "causal_lm",
            "eval_tokens": 1000,
            "eval_source": "synthetic test fixture (not a measurement)",
            "seq_len": 128,
            "stride": 64,
            "mode": "packed",
            "device": "cpu",
            "original": {"loss": ORIGINAL_LOSS, "ppl": math.exp(ORIGINAL_LOSS)},
            "profile_baseline": prof.baseline,
            "clip_search": False,
        },
        "rows": rows,
    }
    path.write_text(json.dumps(doc, indent=2))
    return doc
