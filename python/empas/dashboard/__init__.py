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
import subprocess
import sys
from collections.abc import Sequence
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
    the server's exit code (130 after Ctrl-C, which stops the server)."""
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
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return 130
