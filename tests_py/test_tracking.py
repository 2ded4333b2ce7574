"""Experiment tracking (issue 19): what profile, search, verify and the demo send to
a tracker, read back from W&B (offline run files) and MLflow (a local file store)."""

from __future__ import annotations

import collections
import json
import struct
import sys
import time
from pathlib import Path

import pytest

import empas
from empas.cli import main
from empas.track import MlflowTracker, WandbTracker


class Recorder:
    """A tracker object with the small interface, recording every call (artifact
    files are read when logged: the stages log from temporary directories)."""

    def __init__(self):
        self.config: dict = {}
        self.metrics: list[tuple[int, dict]] = []
        self.tables: dict[str, tuple[list, list]] = {}
        self.artifacts: dict[str, dict[str, str]] = {}
        self.images: dict[str, bytes] = {}
        self.finished = 0

    def log_config(self, config):
        self.config.update(config)

    def log_metrics(self, step, metrics):
        self.metrics.append((step, dict(metrics)))

    def log_table(self, name, columns, rows):
        self.tables[name] = (list(columns), [list(r) for r in rows])

    def log_artifact(self, path, name=None):
        p = Path(path)
        files = sorted(p.iterdir()) if p.is_dir() else [p]
        self.artifacts[name or p.stem] = {f.name: f.read_text() for f in files}

    def log_image(self, name, path):
        self.images[name] = Path(path).read_bytes()

    def finish(self):
        self.finished += 1

    def series(self, key):
        return [(s, m[key]) for s, m in self.metrics if key in m]


# -- the search, with a tracker object ------------------------------------------------


def test_search_sends_config_history_front_and_plans(tinyllama):
    t = Recorder()
    res = empas.search(tinyllama, pop_size=20, generations=4, seed=1, tracker=t)
    assert t.config["search"]["pop_size"] == 20 and t.config["search"]["generations"] == 4
    assert t.config["sensitivity_profile"]["fingerprint"] == tinyllama.fingerprint
    assert t.config["versions"]["empas"] == empas.__version__ and t.config["machine"]["cpus"]
    hist = t.series("search/front_size")
    assert [s for s, _ in hist] == [h["generation"] for h in res.history] == [0, 1, 2, 3, 4]
    assert [v for _, v in hist] == [h["front_size"] for h in res.history]
    assert [v for _, v in t.series("search/hypervolume")] == [h["hypervolume"] for h in res.history]
    assert [v for _, v in t.series("search/best_loss")] == [h["best_loss"] for h in res.history]
    rates = [v for _, v in t.series("search/evals_per_s")]
    assert len(rates) == 5 and all(r is None or r > 0 for r in rates)
    cols, rows = t.tables["search/front"]
    assert cols[:3] == ["index", "predicted_loss", "predicted_bytes"] and len(rows) == len(
        res.front
    )
    assert [r[2] for r in rows] == res.front.bytes.tolist()
    plans = t.artifacts["plans"]
    assert set(plans) == {f"{n}.json" for n in res.archetypes}
    assert empas.Plan.from_json(plans["balanced.json"]).bits == res.archetypes["balanced"].bits
    assert json.loads(t.artifacts["search-result"]["result.json"])["hypervolume"] == res.hypervolume
    assert t.finished == 0  # an object passed in is its owner's to finish


def test_exact_search_has_no_history_but_the_final_front(tinyllama):
    t = Recorder()
    res = empas.search(tinyllama, method="exact", tracker=t)
    assert t.series("search/front_size") == []
    assert t.series("search/final_front_size") == [(0, len(res.front))]
    assert len(t.tables["search/front"][1]) == len(res.front)


def test_progress_callable_still_runs_with_a_tracker(tinyllama):
    seen = []
    t = Recorder()
    empas.search(tinyllama, pop_size=12, generations=5, tracker=t, progress=seen.append)
    assert len(seen) == 6 == len(t.series("search/front_size"))
    stopped = empas.search(
        tinyllama, pop_size=12, generations=5, tracker=Recorder(), progress=lambda s: False
    )
    assert stopped.extra["stopped_early"]


def test_bad_tracker_arguments(tinyllama):
    with pytest.raises(ValueError, match="'wandb', 'mlflow' or a tracker object"):
        empas.search(tinyllama, method="exact", tracker="tensorboard")
    with pytest.raises(TypeError, match="lacks log_image, finish"):
        empas.search(tinyllama, method="exact", tracker=type("T", (), {
            "log_config": print, "log_metrics": print, "log_table": print,
            "log_artifact": print})())  # fmt: skip


@pytest.mark.parametrize("name, module", [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_a_missing_library_names_the_extra(tinyllama, monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    if module == "mlflow":
        monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(ImportError, match=rf"pip install empas\[{name}\]"):
        empas.search(tinyllama, method="exact", tracker=name)


# -- W&B, offline -------------------------------------------------------------------


def wandb_records(run_dir: Path):
    """The records of an offline W&B run (its .wandb file: a LevelDB-style log of
    protobuf records after a 7-byte ':W&B' header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("*.wandb")
    data, pos, buf = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:  # block padding
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            r = pb.Record()
            r.ParseFromString(buf)
            buf = b""
            yield r


def _key(item) -> str:
    """An item's key: ``key``, or its ``nested_key`` path joined with "/"."""
    return item.key or "/".join(item.nested_key)


def wandb_run(run_dir: Path) -> dict:
    # W&B's writer (a separate process) may still be writing when finish() returns:
    # wait for the run's exit record
    deadline = time.monotonic() + 60
    while not any(r.WhichOneof("record_type") == "exit" for r in wandb_records(run_dir)):
        assert time.monotonic() < deadline, f"{run_dir}: no exit record"
        time.sleep(0.2)
    config, history, artifacts = {}, [], {}
    for r in wandb_records(run_dir):
        kind = r.WhichOneof("record_type")
        if kind == "config":
            for i in r.config.update:
                config[_key(i)] = json.loads(i.value_json)
        elif kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "artifact":
            artifacts[r.artifact.name] = sorted(e.path for e in r.artifact.manifest.contents)
    return {"config": config, "history": history, "artifacts": artifacts}


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path / "wandb-runs"


def test_wandb_offline_search(tinyllama, wandb_env):
    t = WandbTracker(project="empas-test", dir=wandb_env, mode="offline")
    res = empas.search(tinyllama, pop_size=16, generations=6, seed=2, tracker=t)
    run_dir = Path(t.run.settings.sync_file).parent
    t.finish()
    got = wandb_run(run_dir)
    assert got["config"]["search"]["generations"] == 6
    assert got["config"]["search"]["pop_size"] == 16
    assert got["config"]["sensitivity_profile"]["fingerprint"] == tinyllama.fingerprint
    assert got["config"]["versions"]["empas"] == empas.__version__
    gens = [h for h in got["history"] if "search/front_size" in h]
    assert len(gens) == len(res.history) == 6 + 1  # the first population and 6 generations
    assert [h["search/step"] for h in gens] == list(range(7))
    assert [h["search/hypervolume"] for h in gens] == [h["hypervolume"] for h in res.history]
    assert any(k.startswith("search/front/") for h in got["history"] for k in h)  # the table
    assert got["artifacts"]["plans"] == sorted(f"{n}.json" for n in res.archetypes)
    assert got["artifacts"]["search-result"] == ["result.json"]
    tables = list((run_dir / "files" / "media" / "table" / "search").glob("front_*.table.json"))
    assert len(json.loads(tables[0].read_text())["data"]) == len(res.front)


def test_wandb_cli_search(tmp_path, wandb_env, capsys):
    out = tmp_path / "res"
    argv = ["search", "example:tinyllama", "-o", str(out), "search=fast", "generations=3"]
    argv += ["--tracker", "wandb", "--tracker-dir", str(wandb_env), "--run-name", "cli"]
    assert main(argv) == 0
    (run_dir,) = (wandb_env / "wandb").glob("offline-run-*")
    got = wandb_run(run_dir)
    assert got["config"]["search"]["generations"] == 3
    assert len([h for h in got["history"] if "search/front_size" in h]) == 3 + 1
    assert "plans" in got["artifacts"]


# -- MLflow, a local file store -----------------------------------------------------


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return (tmp_path / "mlruns").as_uri()


def _artifacts(client, run_id, path=None) -> list[str]:
    out = []
    for a in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, a.path) if a.is_dir else [a.path]
    return sorted(out)


def test_mlflow_search(tinyllama, mlflow_uri):
    t = MlflowTracker(mlflow_uri, experiment="empas-test", run_name="s")
    res = empas.search(tinyllama, pop_size=16, generations=6, seed=2, tracker=t)
    t.finish()
    c = t.client
    run = c.get_run(t.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "s"
    p = run.data.params
    assert p["search.generations"] == "6" and p["search.pop_size"] == "16"
    assert p["sensitivity_profile.fingerprint"] == tinyllama.fingerprint
    assert p["versions.empas"] == empas.__version__
    hist = c.get_metric_history(t.run_id, "search/front_size")
    assert len(hist) == len(res.history) == 7
    assert sorted(m.step for m in hist) == list(range(7))
    hv = sorted(c.get_metric_history(t.run_id, "search/hypervolume"), key=lambda m: m.step)
    assert [m.value for m in hv] == [h["hypervolume"] for h in res.history]
    arts = _artifacts(c, t.run_id)
    assert {f"plans/{n}.json" for n in res.archetypes} <= set(arts)
    assert {"config.json", "search/front.json", "search-result/result.json"} <= set(arts)
    front = json.loads(Path(c.download_artifacts(t.run_id, "search/front.json")).read_text())
    assert len(front["data"]) == len(res.front)


def test_mlflow_run_by_name_finishes_or_fails(tinyllama, mlflow_uri, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    empas.search(tinyllama, method="exact", tracker="mlflow")
    with pytest.raises(ValueError):
        empas.search(tinyllama, method="exact", pinned={"no-such-unit": 4}, tracker="mlflow")
    c = MlflowClient(mlflow_uri)
    runs = c.search_runs([c.get_experiment_by_name("empas").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]


# -- the whole pipeline: profile progress, verify report and plot --------------------


@pytest.fixture(scope="module")
def demo_settings():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return dict(
        units="block", bits=(2, 4), n_tokens=512, seq_len=64, max_eval_tokens=512,
        pop_size=12, generations=3, baselines=(16, 4), measure=0, formats=(),
        progress=False, log=lambda _msg: None,
    )  # fmt: skip


def test_demo_to_mlflow(tiny_model_path, tmp_path, mlflow_uri, monkeypatch, demo_settings):
    from mlflow.tracking import MlflowClient

    from empas.demo import run_demo

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    res = run_demo(tmp_path / "o", model=tiny_model_path, tracker="mlflow", **demo_settings)
    c = MlflowClient(mlflow_uri)
    (run,) = c.search_runs([c.get_experiment_by_name("empas").experiment_id])
    rid = run.info.run_id
    assert run.info.status == "FINISHED" and run.info.run_name == "empas-demo"
    p = run.data.params
    assert p["demo.generations"] == "3" and p["profile.n_tokens"] == "512"
    assert p["sensitivity_profile.fingerprint"] == res.profile.fingerprint
    assert p["model.fingerprint"]  # the model's weights fingerprint (the stage's extras)
    t = res.profile.meta["timings"]
    done = c.get_metric_history(rid, "profile/done")
    assert sorted(m.value for m in done) == list(range(1, t["experiments"] + 1))
    assert len(c.get_metric_history(rid, "search/front_size")) == 3 + 1
    assert len(c.get_metric_history(rid, "verify/loss")) == len(res.verify.rows)
    arts = set(_artifacts(c, rid))
    assert {"profile/profile.json", "profile/delta.json", "search/front.json"} <= arts
    assert {"verify-report/verify.json", "verify/report.json"} <= arts
    assert {"images/predicted_vs_measured.png", "demo-report/report.json"} <= arts
    png = Path(c.download_artifacts(rid, "images/predicted_vs_measured.png")).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(Path(c.download_artifacts(rid, "verify-report/verify.json")).read_text())
    assert [r["name"] for r in doc["rows"]] == [r["name"] for r in res.verify.rows]


def test_profile_and_verify_each_with_a_tracker(tiny_model_path, calib_texts, eval_texts):
    t = Recorder()
    prof = empas.profile(
        tiny_model_path, calib_texts, choices=(2, 4), n_tokens=256, seq_len=64,
        progress=False, tracker=t,
    )  # fmt: skip
    n = prof.meta["timings"]["experiments"]
    assert [s for s, _ in t.series("profile/done")] == list(range(1, n + 1))
    assert all(m["profile/total"] == n for _, m in t.metrics if "profile/total" in m)
    assert t.config["profile"]["n_tokens"] == 256
    assert t.config["sensitivity_profile"]["fingerprint"] == prof.fingerprint
    assert json.loads(t.artifacts["profile"]["profile.json"])["format"] == "empas.sensitivity/1"
    cols, rows = t.tables["profile/delta"]
    assert cols[0] == "unit" and [r[0] for r in rows] == prof.unit_names
    v = Recorder()
    rep = empas.verify(
        tiny_model_path, None, eval_texts, profile=prof, baselines=(16, 4), max_tokens=256,
        progress=False, tracker=v,
    )  # fmt: skip
    assert v.config["verify"]["baselines"] == [16, 4]
    assert [r[0] for r in v.tables["verify/report"][1]] == [r["name"] for r in rep.rows]
    assert (
        json.loads(v.artifacts["verify-report"]["verify.json"])["rows"]
        == json.loads(rep.to_json())["rows"]
    )
    assert v.images["verify/predicted_vs_measured"][:4] == b"\x89PNG"
    counts = collections.Counter(k for _, m in v.metrics for k in m)
    assert counts["verify/loss"] == len(rep.rows)


def test_mlflow_cli_search_and_a_missing_library_exits_2(tmp_path, mlflow_uri, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    store = tmp_path / "store"
    argv = ["search", "example:tinyllama", "-o", str(tmp_path / "r"), "generations=2"]
    argv += ["pop_size=12", "--tracker", "mlflow", "--tracker-dir", str(store)]
    assert main(argv + ["--tracker-project", "cli"]) == 0
    c = MlflowClient(store.resolve().as_uri())
    (run,) = c.search_runs([c.get_experiment_by_name("cli").experiment_id])
    assert run.info.run_name == "empas-search" and run.info.status == "FINISHED"
    assert run.data.params["search.pop_size"] == "12"
    assert len(c.get_metric_history(run.info.run_id, "search/front_size")) == 2 + 1
    monkeypatch.setitem(sys.modules, "wandb", None)
    capsys.readouterr()
    assert main(argv[:4] + ["--force", "--tracker", "wandb"]) == 2
    assert "pip install empas[wandb]" in capsys.readouterr().err
