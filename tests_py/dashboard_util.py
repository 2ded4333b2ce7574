"""A real `empas dashboard` process for the tests (signals, the browser tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


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

    def stop(self) -> None:
        """Stops the launcher and its server whatever state they are in."""
        pids = self.server_pids()
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
