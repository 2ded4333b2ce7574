"""Experiment tracking: the pipeline's settings, progress and results sent to
Weights & Biases or MLflow (``tracker="wandb"`` / ``"mlflow"`` on
:func:`empas.profile`, :func:`empas.search`, :func:`empas.verify` and
:func:`empas.demo.run_demo`), or to any object with the same small interface
(:class:`Tracker`). Both libraries are optional extras (``pip install
empas[wandb]`` / ``empas[mlflow]``)."""

from .base import Tracker, TrackerSpec, check_tracker, make_tracker, open_tracker, run_info
from .mlflow_tracker import MlflowTracker
from .stages import (
    log_profile,
    log_search,
    log_verify,
    profile_progress,
    search_progress,
)
from .wandb_tracker import WandbTracker

__all__ = [
    "MlflowTracker",
    "Tracker",
    "TrackerSpec",
    "WandbTracker",
    "check_tracker",
    "log_profile",
    "log_search",
    "log_verify",
    "make_tracker",
    "open_tracker",
    "profile_progress",
    "run_info",
    "search_progress",
]
