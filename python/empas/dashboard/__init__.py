"""The EMPAS dashboard: an interactive view of a results directory (Streamlit).

    >>> from empas.dashboard import load_results, launch
    >>> res = load_results("out/demo")          # DashboardError on bad input
    >>> launch("out/demo", port=8501)           # runs `streamlit run` until Ctrl-C

It shows the predicted Pareto front (with measured Δloss of verified plans and the
uniform baselines overlaid), per-unit precision maps, an archetype comparison
table, a memory-budget picker and plan downloads. Streamlit and altair are needed
only to run the app (``pip install streamlit altair``); this package imports
streamlit only inside ``app.py``, and ``import empas`` does not import it.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from .data import DashboardError, PlanView, Results, best_under, load_results, plan_json

__all__ = [
    "DashboardError",
    "PlanView",
    "Results",
    "app_path",
    "best_under",
    "launch",
    "load_results",
    "plan_json",
]


def app_path() -> Path:
    """Path of the Streamlit script (``streamlit run`` it)."""
    return Path(__file__).with_name("app.py")


def _check_port(host: str, port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise DashboardError(f"port must be an integer in 1..65535, got {port!r}")
    from ..util.net import listen

    # as Streamlit will bind it; closed again at once (Streamlit binds it itself)
    listen(
        host, port, DashboardError, "{host}:{port} is in use ({reason}); pass another port"
    ).close()


def command(
    results: str | os.PathLike,
    *,
    verify: str | os.PathLike | None = None,
    profile: str | os.PathLike | None = None,
    host: str = "127.0.0.1",
    port: int = 8501,
    headless: bool = True,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The ``streamlit run`` command line that :func:`launch` runs."""
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app_path()),
        "--server.address",
        str(host),
        "--server.port",
        str(port),
        "--server.headless",
        "true" if headless else "false",
        "--browser.gatherUsageStats",
        "false",
        # no Deploy button nor developer menu: the page is a viewer of EMPAS results
        "--client.toolbarMode",
        "minimal",
        *map(str, extra_args),
        "--",
        "--results",
        str(Path(results).resolve()),
    ]
    if verify is not None:
        cmd += ["--verify", str(Path(verify).resolve())]
    if profile is not None:
        spec = str(profile)
        cmd += ["--profile", spec if spec.startswith("example:") else str(Path(spec).resolve())]
    return cmd


def launch(
    results: str | os.PathLike,
    *,
    verify: str | os.PathLike | None = None,
    profile: str | os.PathLike | None = None,
    host: str = "127.0.0.1",
    port: int = 8501,
    headless: bool = True,
    extra_args: Sequence[str] = (),
) -> int:
    """Serves the dashboard of ``results`` until the server exits or Ctrl-C.

    The inputs are read first (:func:`load_results`; :class:`DashboardError` on
    bad input) and the port is checked, so nothing starts on bad input. Returns
    the server's exit code, or 128 + the signal's number when SIGTERM, SIGINT or SIGHUP
    stopped the launcher (130 after Ctrl-C, 143 after ``kill PID``): the signal is
    passed on to the server, so stopping the launcher by its PID stops the server
    too, and the server (on Linux) is stopped when the launcher dies however it dies."""
    load_results(results, verify, profile)
    missing = [m for m in ("streamlit", "altair") if importlib.util.find_spec(m) is None]
    if missing:
        raise DashboardError(
            f"the dashboard needs {' and '.join(missing)}: pip install streamlit altair"
        )
    _check_port(host, port)
    cmd = command(
        results,
        verify=verify,
        profile=profile,
        host=host,
        port=port,
        headless=headless,
        extra_args=extra_args,
    )
    return _supervise(_start(cmd))


# signals that stop the dashboard: passed on to the server, which then exits
_STOP_SIGNALS = tuple(
    getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, n)
)


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the server get SIGTERM when the launcher dies (even
    by SIGKILL, which cannot be passed on): Linux's PR_SET_PDEATHSIG. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os._exit(1)

    return preexec


def _start(cmd: list[str]) -> subprocess.Popen:
    """The server in a process group of its own (a terminal's Ctrl-C reaches the
    launcher only, which passes it on once), stopped with the launcher if that dies."""
    return subprocess.Popen(cmd, process_group=0, preexec_fn=_die_with_parent())


class _Stop(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _supervise(proc: subprocess.Popen, grace: float = 10.0) -> int:
    """Waits for the server and returns its exit code. SIGTERM, SIGINT and SIGHUP sent
    to the launcher (``kill PID``, Ctrl-C, a closed terminal) are passed on to the
    server; the launcher then waits ``grace`` seconds for it to exit (SIGKILL after
    that) and returns 128 + the signal number (130 after Ctrl-C, 143 after SIGTERM)."""
    stopping: list[int] = []

    def forward(signum, frame):
        try:
            proc.send_signal(signum)
        except OSError:  # already gone
            pass
        if not stopping:
            stopping.append(signum)
            raise _Stop(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, forward) for s in _STOP_SIGNALS}
    try:
        try:
            return proc.wait()
        except (_Stop, KeyboardInterrupt) as exc:  # KeyboardInterrupt: no handler set
            signum = exc.signum if isinstance(exc, _Stop) else int(signal.SIGINT)
            if not stopping:
                proc.send_signal(signum)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return 128 + signum
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
