"""MLflow: one MLflow run per tracked call (or per demo), through MlflowClient (no
global "active run" is touched)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import flatten, plain

__all__ = ["MlflowTracker"]

_MAX_PARAM = 6000  # MLflow's limit on a parameter value


def import_mlflow():
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ImportError(
            "tracker='mlflow' needs the mlflow package: pip install empas[mlflow]"
        ) from None
    return MlflowClient


class MlflowTracker:
    """Logs to an MLflow run. ``tracking_uri`` (default $MLFLOW_TRACKING_URI, else a
    local file store ``./mlruns``; a ``file:`` store sets ``MLFLOW_ALLOW_FILE_STORE=true``
    when unset, which MLflow >= 3.7 needs for it), ``experiment`` (default $MLFLOW_EXPERIMENT_NAME
    or "empas"), or an existing ``run_id`` to log into. Settings become parameters
    (``search.pop_size``) and, whole, the artifact ``config.json``."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        experiment: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        run_id: str | None = None,
    ):
        client_cls = import_mlflow()
        uri = (
            tracking_uri
            or os.environ.get("MLFLOW_TRACKING_URI")
            or Path("mlruns").resolve().as_uri()
        )
        self.tracking_uri = uri
        if uri.startswith("file:") or "://" not in uri:
            # MLflow >= 3.7 keeps the file store in maintenance mode and refuses it unless
            # this is set; a local file store is what tracking_uri asked for (no server,
            # no database driver), so opt in for this process
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = client_cls(tracking_uri=uri)
        self._own = run_id is None
        if run_id is None:
            name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "empas"
            exp = self.client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)
            run_id = self.client.create_run(
                exp_id, run_name=run_name, tags=dict(tags or {})
            ).info.run_id
        self.run_id = run_id
        self._config: dict[str, Any] = {}
        self._params: dict[str, str] = {}
        self._tables: list[dict[str, str]] = []

    def log_config(self, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param, RunTag

        config = plain(dict(config))
        _merge(self._config, config)
        params, tags = [], []
        for k, v in flatten(config).items():
            text = v if isinstance(v, str) else json.dumps(v)
            text = text[:_MAX_PARAM]
            if k not in self._params:
                self._params[k] = text
                params.append(Param(k, text))
            elif self._params[k] != text:  # parameters are immutable: a changed value is a tag
                tags.append(RunTag(f"changed.{k}"[:250], text[:5000]))
        for i in range(0, max(len(params), len(tags)), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100], tags=tags[i : i + 100])
        self.client.log_dict(self.run_id, self._config, "config.json")

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, int(step))
            for k, v in metrics.items()
            if v is not None and not isinstance(v, str)
        ]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        # what MlflowClient.log_table writes (pandas' "split" layout) and the tag that makes
        # the UI show it as a table, without pandas (whose 3.x warns inside log_table)
        path = f"{name}.json"
        doc = {"columns": list(columns), "data": [plain(list(r)) for r in rows]}
        self.client.log_dict(self.run_id, doc, path)
        self._tables.append({"path": path, "type": "table"})
        self.client.set_tag(self.run_id, "mlflow.loggedArtifacts", json.dumps(self._tables))

    def log_artifact(self, path: str | os.PathLike, name: str | None = None) -> None:
        p = Path(path)
        if p.is_dir():
            self.client.log_artifacts(self.run_id, str(p), artifact_path=name or p.name)
        else:
            self.client.log_artifact(self.run_id, str(p), artifact_path=name)

    def log_image(self, name: str, path: str | os.PathLike) -> None:
        # a file under images/, shown by the run's artifact view
        self.client.log_artifact(self.run_id, str(path), artifact_path="images")

    def finish(self) -> None:
        if self._own:
            self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self) -> None:
        if self._own:
            self.client.set_terminated(self.run_id, "FAILED")


def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v
