"""The tracker interface, resolving ``tracker=`` arguments, and what every run records
about the software and the machine."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, Union, runtime_checkable

__all__ = ["Tracker", "TrackerSpec", "open_tracker", "run_info"]


@runtime_checkable
class Tracker(Protocol):
    """What EMPAS calls on a tracker. Metric names carry their stage as a prefix
    (``search/front_size``); ``step`` counts within that stage (the generation,
    the experiment)."""

    def log_config(self, config: Mapping[str, Any]) -> None: ...

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def log_table(
        self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None: ...

    def log_artifact(self, path: str | os.PathLike, name: str | None = None) -> None: ...

    def log_image(self, name: str, path: str | os.PathLike) -> None: ...

    def finish(self) -> None: ...


TrackerSpec = Union[str, Tracker, None]

KINDS = ("wandb", "mlflow")


def make_tracker(kind: str, *, run_name: str | None = None, **options: Any) -> Tracker:
    """A new run of the named tracker: "wandb" or "mlflow"."""
    if kind == "wandb":
        from .wandb_tracker import WandbTracker

        return WandbTracker(name=run_name, **options)
    if kind == "mlflow":
        from .mlflow_tracker import MlflowTracker

        return MlflowTracker(run_name=run_name, **options)
    raise ValueError(f"tracker must be 'wandb', 'mlflow' or a tracker object, not {kind!r}")


def check_tracker(tracker: Any) -> None:
    """A tracker object must have every method of :class:`Tracker`."""
    missing = [
        m
        for m in ("log_config", "log_metrics", "log_table", "log_artifact", "log_image", "finish")
        if not callable(getattr(tracker, m, None))
    ]
    if missing:
        raise TypeError(
            f"tracker {type(tracker).__name__} lacks {', '.join(missing)} (see empas.track.Tracker)"
        )


@contextlib.contextmanager
def open_tracker(tracker: TrackerSpec, run_name: str | None = None) -> Iterator[Tracker | None]:
    """The tracker for one pipeline call. A name ("wandb"/"mlflow") starts a run that
    is finished when the call ends (also on an error); an object is used as it is
    and left open (its owner finishes it); None tracks nothing."""
    if tracker is None:
        yield None
        return
    if isinstance(tracker, str):
        t = make_tracker(tracker, run_name=run_name)
        try:
            yield t
        except BaseException:
            fail = getattr(t, "fail", None)
            (fail or t.finish)()
            raise
        t.finish()
        return
    check_tracker(tracker)
    yield tracker


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def run_info() -> dict[str, Any]:
    """Versions (EMPAS, Python, the libraries it ran with) and the machine."""
    from empas import __version__

    versions: dict[str, Any] = {"empas": __version__, "python": platform.python_version()}
    for dist in ("numpy", "torch", "transformers"):
        v = _version(dist)
        if v is not None:
            versions[dist] = v
    machine: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    torch = sys.modules.get("torch")  # only when the run already imported it
    if torch is not None and torch.cuda.is_available():
        machine["cuda_device"] = torch.cuda.get_device_name(0)
        machine["cuda"] = torch.version.cuda
    return {"versions": versions, "machine": machine}


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"search": {"pop_size": 100}} -> {"search.pop_size": 100}."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def plain(v: Any) -> Any:
    """A value a tracker's config can hold: paths and tuples as text and lists."""
    if isinstance(v, Mapping):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if hasattr(v, "item"):  # numpy scalars
        return v.item()
    return str(v)
