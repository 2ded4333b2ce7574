"""Weights & Biases: one W&B run per tracked call (or per demo)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import plain

__all__ = ["WandbTracker"]


def import_wandb():
    try:
        import wandb
    except ImportError:
        raise ImportError(
            "tracker='wandb' needs the wandb package: pip install empas[wandb]"
        ) from None
    return wandb


class WandbTracker:
    """Logs to a W&B run. ``project`` (default $WANDB_PROJECT or "empas"), ``dir``
    (where the run's files go, default $WANDB_DIR or the working directory),
    ``mode`` ("online", "offline"; default $WANDB_MODE, else W&B's own choice),
    or an already started ``run``. Metrics of a stage are plotted against that
    stage's step (``search/step`` = the generation)."""

    def __init__(
        self,
        project: str | None = None,
        *,
        name: str | None = None,
        dir: str | os.PathLike | None = None,
        mode: str | None = None,
        entity: str | None = None,
        tags: Sequence[str] | None = None,
        run: Any = None,
    ):
        wandb = import_wandb()
        self._wandb = wandb
        self._own = run is None
        if run is None:
            if dir is not None:
                Path(dir).mkdir(parents=True, exist_ok=True)
            run = wandb.init(
                project=project or os.environ.get("WANDB_PROJECT") or "empas",
                name=name,
                dir=str(dir) if dir is not None else None,
                mode=mode,
                entity=entity,
                tags=list(tags) if tags else None,
                reinit="create_new",
                settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
            )
        self.run = run
        self._stages: set[str] = set()

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(plain(dict(config)), allow_val_change=True)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        row: dict[str, Any] = {}
        for key, v in metrics.items():
            if v is None:
                continue
            stage = key.split("/")[0] if "/" in key else ""
            step_key = f"{stage}/step" if stage else "step"
            if stage not in self._stages:
                self._stages.add(stage)
                self.run.define_metric(step_key)
                self.run.define_metric(f"{stage}/*" if stage else "*", step_metric=step_key)
            row[step_key] = int(step)
            row[key] = plain(v)
        if row:
            self.run.log(row)

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        table = self._wandb.Table(columns=list(columns), data=[plain(list(r)) for r in rows])
        self.run.log({name: table})

    def log_artifact(self, path: str | os.PathLike, name: str | None = None) -> None:
        p = Path(path)
        art_name = re.sub(r"[^A-Za-z0-9_.-]", "-", name or p.stem)
        art = self._wandb.Artifact(art_name, type="empas")
        if p.is_dir():
            art.add_dir(str(p))
        else:
            art.add_file(str(p))
        self.run.log_artifact(art)

    def log_image(self, name: str, path: str | os.PathLike) -> None:
        self.run.log({name: self._wandb.Image(str(path))})

    def finish(self) -> None:
        if self._own:
            self.run.finish()

    def fail(self) -> None:
        if self._own:
            self.run.finish(exit_code=1)
