"""What each pipeline stage sends to a tracker. The stages call these through
``tracker=``; every function takes the tracker first and does nothing for None."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .base import Tracker, plain, run_info

__all__ = [
    "log_profile",
    "log_search",
    "log_verify",
    "profile_progress",
    "search_progress",
    "describe_profile",
    "stage_config",
]


def _settings(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return plain(dataclasses.asdict(config))
    return plain(dict(config))


def stage_config(
    tracker: Tracker | None,
    stage: str,
    config: Any,
    profile: Any = None,
    **extra: Any,
) -> None:
    """The run config of one stage: its settings under ``stage``, the profile it
    works on (model, fingerprint, path), versions and machine."""
    if tracker is None:
        return
    doc: dict[str, Any] = {stage: _settings(config), **run_info()}
    if profile is not None:
        doc["sensitivity_profile"] = describe_profile(profile)
    doc.update(plain(extra))
    tracker.log_config(doc)


def describe_profile(profile: Any) -> dict[str, Any]:
    """What identifies a sensitivity profile in a run's config."""
    return {
        "model": profile.model_name,
        "fingerprint": profile.fingerprint,
        "path": str(profile.path) if profile.path else None,
        "units": profile.n_units,
        "choices": list(profile.choices),
    }


# -- profile -----------------------------------------------------------------------


def profile_progress(tracker: Tracker | None) -> Callable[[dict[str, Any]], None] | None:
    """A per-experiment callback for the profiling loop: experiments done and to go,
    the cell's Δloss and seconds."""
    if tracker is None:
        return None

    def on_experiment(e: Mapping[str, Any]) -> None:
        tracker.log_metrics(
            e["done"],
            {
                "profile/done": e["done"],
                "profile/total": e["total"],
                "profile/fraction": e["done"] / e["total"] if e["total"] else 1.0,
                "profile/delta": e["delta"],
                "profile/bits": e["bits"],
                "profile/seconds": e["seconds"],
            },
        )

    return on_experiment


def log_profile(tracker: Tracker | None, prof: Any) -> None:
    """The finished profile: its fingerprint, timings, the Δ table and the file."""
    if tracker is None:
        return
    t = prof.meta.get("timings") or {}
    tracker.log_config({"sensitivity_profile": describe_profile(prof), "profile_timings": t})
    tracker.log_metrics(
        int(t.get("experiments") or 0),
        {"profile/baseline_loss": prof.baseline, "profile/total_s": t.get("total_s")},
    )
    delta = prof.delta
    rows = [
        [name] + [None if v != v else float(v) for v in delta[i]]
        for i, name in enumerate(prof.unit_names)
    ]
    tracker.log_table("profile/delta", ["unit"] + [f"{b}bit" for b in prof.choices], rows)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "profile.json"
        prof.save(path)
        tracker.log_artifact(path, "profile")


# -- search ------------------------------------------------------------------------


def search_progress(tracker: Tracker | None) -> Callable[[dict[str, Any]], None] | None:
    """A per-generation callback for :func:`empas.search` that sends the generation's
    front size, hypervolume, best loss and evaluations per second to the tracker."""
    if tracker is None:
        return None
    last = {"evaluations": 0, "seconds": 0.0}

    def log(stats: dict[str, Any]) -> None:
        de = stats["evaluations"] - last["evaluations"]
        ds = stats["seconds"] - last["seconds"]
        last.update(evaluations=stats["evaluations"], seconds=stats["seconds"])
        tracker.log_metrics(
            stats["generation"],
            {
                "search/front_size": stats["front_size"],
                "search/hypervolume": stats["hypervolume"],
                "search/best_loss": stats["best_loss"],
                "search/min_bytes": stats["min_bytes"],
                "search/n_feasible": stats["n_feasible"],
                "search/evaluations": stats["evaluations"],
                "search/evals_per_s": de / ds if ds > 0 else None,
            },
        )

    return log


def log_search(tracker: Tracker | None, res: Any) -> None:
    """The finished search: summary metrics, the front as a table, the archetype plans
    and result.json as artifacts."""
    if tracker is None:
        return
    final = {
        "search/final_front_size": len(res.front),
        "search/final_hypervolume": res.hypervolume,
        "search/total_evaluations": res.evaluations,
        "search/seconds": res.seconds,
    }
    if len(res.front):
        final["search/final_best_loss"] = float(res.front.loss.min())
    step = res.history[-1]["generation"] if res.history else 0
    tracker.log_metrics(step, final)
    f, labels = res.front, {}
    for name, i in res.archetype_index.items():
        labels.setdefault(i, []).append(name)
    rows = [
        [
            i,
            float(f.loss[i]),
            int(f.bytes[i]),
            float(f.avg_bits[i]),
            "|".join(labels.get(i, [])),
            " ".join(map(str, f.bits(i))),
        ]
        for i in range(len(f))
    ]
    tracker.log_table(
        "search/front",
        ["index", "predicted_loss", "predicted_bytes", "avg_bits", "archetypes", "bits"],
        rows,
    )
    with tempfile.TemporaryDirectory() as d:
        plans = Path(d) / "plans"
        plans.mkdir()
        for name, plan in res.archetypes.items():
            plan.save(plans / f"{name}.json")
        tracker.log_artifact(plans, "plans")
        result = Path(d) / "result.json"
        result.write_text(res.to_json() + "\n", encoding="utf-8")
        tracker.log_artifact(result, "search-result")


# -- verify ------------------------------------------------------------------------

_VERIFY_COLUMNS = ["name", "kind", "loss", "ppl", "delta", "pred_delta", "bytes"]


def log_verify(
    tracker: Tracker | None, rep: Any, document: Mapping[str, Any] | None = None
) -> None:
    """The verify report: per-plan metrics, the table, verify.json as an artifact and
    the predicted-vs-measured plot as an image (when the report has predictions)."""
    if tracker is None:
        return
    for i, r in enumerate(rep.rows):
        tracker.log_metrics(
            i,
            {
                f"verify/{k}": r.get(k)
                for k in ("loss", "ppl", "delta", "pred_delta", "bytes")
                if isinstance(r.get(k), (int, float))
            },
        )
    tracker.log_table(
        "verify/report", _VERIFY_COLUMNS, [[r.get(c) for c in _VERIFY_COLUMNS] for r in rep.rows]
    )
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "verify.json"
        doc = dict(document) if document is not None else rep.document()
        path.write_text(json.dumps(plain(doc), indent=2) + "\n", encoding="utf-8")
        tracker.log_artifact(path, "verify-report")
        if any(r.get("pred_delta") is not None for r in rep.rows):
            png = Path(d) / "predicted_vs_measured.png"
            rep.save_plot(png)
            tracker.log_image("verify/predicted_vs_measured", png)
