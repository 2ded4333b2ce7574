"""Sharded profiling on torch.distributed (issue 16): the share of cells, and 2
CPU ranks on gloo giving the single-process table bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import empas
from empas.profile.distributed import cell_cost, settings_hash, share

TORCHRUN = Path(sys.executable).with_name("torchrun")
SETTINGS = dict(units="block", choices=(0, 2, 4), n_tokens=256, seq_len=64, batch_size=4)


# -- the share: balance and determinism ---------------------------------------------


def test_cell_cost_counts_blocks_run():
    assert cell_cost(0, 4) == 5  # every block and the head
    assert cell_cost(3, 4) == 2  # the last block and the head
    assert cell_cost(4, 4) == 1  # the head alone
    assert cell_cost(-1, 4) == 5  # the embedding: everything
    assert cell_cost(3, 4, cache=False) == 5


def test_share_is_a_partition_balanced_and_deterministic():
    n_blocks, n_choices = 32, 5
    costs = [cell_cost(b, n_blocks) for b in range(n_blocks) for _ in range(n_choices)]
    for n in (1, 2, 3, 4, 7, 8):
        parts = share(costs, n)
        assert parts == share(list(costs), n)  # same input, same share
        flat = sorted(i for p in parts for i in p)
        assert flat == list(range(len(costs)))  # every cell exactly once
        loads = [sum(costs[i] for i in p) for p in parts]
        # LPT: the spread is at most the largest single cell; near-perfect here
        assert max(loads) - min(loads) <= max(costs)
        assert max(loads) <= sum(costs) / n + max(costs)
    # a naive contiguous split would give rank 0 the expensive early blocks
    parts = share(costs, 2)
    loads = [sum(costs[i] for i in p) for p in parts]
    assert abs(loads[0] - loads[1]) <= 1, loads


def test_share_ties_and_edge_cases():
    assert share([1, 1, 1, 1], 2) == [[0, 2], [1, 3]]
    assert share([5, 1, 1, 1, 1, 1], 2) == [[0], [1, 2, 3, 4, 5]]
    assert share([3, 2], 4) == [[0], [1], [], []]  # more ranks than cells: some idle
    with pytest.raises(ValueError):
        share([1], 0)


def test_settings_hash_sees_every_field():
    a = {"key": {"choices": [2, 4, 16]}, "settings": {"seed": 0}}
    b = {"key": {"choices": [2, 4, 16]}, "settings": {"seed": 1}}
    assert settings_hash(a) == settings_hash(json.loads(json.dumps(a)))
    assert settings_hash(a) != settings_hash(b)


# -- two gloo ranks ----------------------------------------------------------------


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(empas.__file__).resolve().parents[1])  # the empas in use
    env["OMP_NUM_THREADS"] = "1"
    return env


def _torchrun(args: list[str], tmp_path: Path, timeout: int = 600):
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "empas", *args]
    return subprocess.run(
        cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory, calib_texts):
    p = tmp_path_factory.mktemp("calib") / "calib.txt"
    p.write_text("\n\n".join(calib_texts))
    return p


def test_two_gloo_ranks_give_the_single_process_table(tiny_model_path, calib_file, tmp_path):
    import torch

    import empas

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks run one thread each: same kernels, same sums
    try:
        ref = empas.profile(tiny_model_path, str(calib_file), progress=False, **SETTINGS)
    finally:
        torch.set_num_threads(threads)
    args = [
        "profile", str(tiny_model_path), "--calib", str(calib_file), "-o", "dist.json",
        "--bits", "0,2,4", "--n-tokens", "256", "--seq-len", "64", "--batch-size", "4",
        "--checkpoint", "ck.json", "--quiet",
    ]  # fmt: skip
    r = _torchrun(args, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    prof = empas.load_profile(tmp_path / "dist.json")
    assert prof.unit_names == ref.unit_names and prof.choices == ref.choices
    assert np.array_equal(prof.delta, ref.delta)  # bit-identical on CPU
    assert np.array_equal(prof.stderr, ref.stderr)
    assert prof.baseline == ref.baseline
    d = prof.meta["source"]["distributed"]
    assert d["world_size"] == 2 and d["backend"] == "gloo"
    assert sum(x["n_cells"] for x in d["ranks"]) == ref.meta["timings"]["experiments"]
    assert all(x["measured"] == x["n_cells"] > 0 for x in d["ranks"])
    for k in (0, 1):
        assert (tmp_path / f"ck.json.rank{k}").is_file()
    assert (tmp_path / "ck.json").is_file()  # rank 0's merged checkpoint
    # a rerun with the same command redoes nothing: every cell is in the checkpoints
    os.remove(tmp_path / "dist.json")
    r = _torchrun(args, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    again = empas.load_profile(tmp_path / "dist.json")
    assert np.array_equal(again.delta, ref.delta)
    assert again.meta["timings"]["experiments"] == 0
    assert all(x["measured"] == 0 for x in again.meta["source"]["distributed"]["ranks"])


def _rank_with_seed(rank: int, model: str, calib: str, init: str, q) -> None:
    import torch
    import torch.distributed as dist

    import empas

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    ck = init.removeprefix("file://") + ".ck.json"
    try:
        empas.profile(model, calib, seed=rank, checkpoint=ck, progress=False, **SETTINGS)
        q.put((rank, "ok", ""))
    except Exception as exc:
        q.put((rank, type(exc).__name__, str(exc)))
    finally:
        dist.destroy_process_group()


def test_mismatched_settings_across_ranks_are_refused(tiny_model_path, calib_file, tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [
        ctx.Process(
            target=_rank_with_seed, args=(r, str(tiny_model_path), str(calib_file), init, q)
        )
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)  # the messages are small: the queue does not block the exit
    assert [p.exitcode for p in procs] == [0, 0]  # a crashed rank fails here, not by timeout
    got = sorted(q.get(timeout=30) for _ in procs)
    for rank, kind, msg in got:
        assert kind == "ProfileError", (rank, kind, msg)
        assert "rank(s) [1] differ from rank 0" in msg
    assert not list(tmp_path.glob("*.ck.json*"))  # refused before any work: nothing measured


# -- a rank that dies: the monitor (one process, a store shared with a fake peer) ----


def _monitor(timeout=0.6, start_timeout=0.6, rank=0, world=2):
    import torch.distributed as dist

    from empas.profile.distributed import Group, Monitor

    group = Group(rank, world, "gloo")
    return Monitor(group, timeout, start_timeout, interval=0.05, store=dist.HashStore())


def _beat(m, rank, beat, done=3, total=8, host="node-b"):
    # what the peer's own monitor writes (the same prefixed store)
    m.store.set(
        f"hb/{rank}", json.dumps({"beat": beat, "host": host, "done": done, "total": total})
    )


def test_monitor_names_a_rank_whose_heartbeat_stops():
    import time

    from empas.errors import ProfileError

    m = _monitor().start()
    try:
        t = time.monotonic()
        for k in range(12):  # alive for 1.2 s, twice the timeout: no alarm
            _beat(m, 1, k)
            time.sleep(0.1)
            m.check()
        assert time.monotonic() - t > 1.0
        died = time.monotonic()
        with pytest.raises(ProfileError) as err:
            m.wait("gather")  # the peer never arrives: named, not a hang
        waited = time.monotonic() - died
    finally:
        m.stop()
    msg = str(err.value)
    assert "rank 1 (node-b) stopped responding" in msg and "after 3 of its 8 cells" in msg
    assert "rerun the same command" in msg
    assert 0.5 < waited < 3.0, waited  # the timeout (0.6 s) plus polling, bounded
    posted = json.loads(m.store.get("problem"))  # what every other rank reads
    assert posted["rank"] == 1 and posted["message"] == msg


def test_monitor_a_rank_that_never_starts_and_a_rank_that_fails():
    from empas.errors import ProfileError

    m = _monitor(timeout=0.3, start_timeout=0.8).start()
    try:
        with pytest.raises(ProfileError, match="rank 1 never started measuring"):
            m.wait("start")
    finally:
        m.stop()
    # a rank that leaves with an error: the others stop naming it, it does not accuse itself
    a = _monitor(timeout=30)
    a.done, a.total = 2, 5
    a.start()
    try:
        a.leave(RuntimeError("boom"))
        a.check()  # its own failure: it raises its own exception, not this one
        peer_view = json.loads(a.store.get("problem"))
        assert peer_view["rank"] == 0
        assert (
            "rank 0 (" in peer_view["message"]
            and "failed after 2 of its 5 cells" in (peer_view["message"])
        )
        assert "RuntimeError: boom" in peer_view["message"]
    finally:
        a.stop()
    b = _monitor(timeout=30).start()
    try:
        b.store.set("at/x/1", "1")
        b.wait("x")  # everyone arrived: returns
        b.store.set("problem", json.dumps({"rank": 1, "message": "rank 1 (h) failed: X"}))
        with pytest.raises(ProfileError, match=r"rank 1 \(h\) failed: X"):
            for _ in range(100):
                b.check()
                __import__("time").sleep(0.02)
    finally:
        b.stop()


def test_rank_timeout_from_the_environment(monkeypatch):
    from empas.profile.distributed import DEFAULT_RANK_TIMEOUT, rank_timeout

    monkeypatch.delenv("EMPAS_RANK_TIMEOUT", raising=False)
    assert rank_timeout() == DEFAULT_RANK_TIMEOUT
    monkeypatch.setenv("EMPAS_RANK_TIMEOUT", "7.5")
    assert rank_timeout() == 7.5
    for bad in ("abc", "0", "-1", "inf", "nan"):
        monkeypatch.setenv("EMPAS_RANK_TIMEOUT", bad)
        with pytest.raises(ValueError, match="EMPAS_RANK_TIMEOUT must be a positive number"):
            rank_timeout()


# -- a rank that dies mid-run: two gloo ranks, rank 1 exits abruptly ---------------------


def _rank_run(rank: int, model: str, calib: str, init: str, ck: str, env: dict, q) -> None:
    import time

    import torch
    import torch.distributed as dist

    import empas

    os.environ.update(env)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        p = empas.profile(model, calib, checkpoint=ck, progress=False, **SETTINGS)
        d = p.meta["source"]["distributed"]
        q.put((rank, "ok", p.delta.tolist(), p.stderr.tolist(), d, time.time()))
    except Exception as exc:
        q.put((rank, type(exc).__name__, str(exc), None, None, time.time()))
    finally:
        dist.destroy_process_group()


def _spawn_two(tmp_path, model, calib, ck, envs, name):
    import multiprocessing as mp

    # forkserver: one fresh process imports torch, transformers and empas once; each
    # rank is forked from it (no OpenMP pool has run there) instead of importing again
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch.distributed", "transformers", "empas"])
    q = ctx.Queue()
    init = f"file://{tmp_path / name}"
    procs = [
        ctx.Process(target=_rank_run, args=(r, model, calib, init, str(ck), envs[r], q))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():  # only on failure: never leave a rank behind
            p.kill()
    got = {}
    while not q.empty() or len(got) < sum(c == 0 for c in codes):
        item = q.get(timeout=30)
        got[item[0]] = item[1:]
    return codes, got


def _cells(path: Path) -> set[str]:
    return {k for k in json.loads(path.read_text())["done"] if "|" in k}


def test_a_rank_that_dies_is_named_and_a_rerun_finishes(tiny_model_path, calib_file, tmp_path):
    import socket

    import torch

    import empas

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = empas.profile(tiny_model_path, str(calib_file), progress=False, **SETTINGS)
    finally:
        torch.set_num_threads(threads)
    n_cells = ref.meta["timings"]["experiments"]
    ck = tmp_path / "ck.json"
    model, calib = str(tiny_model_path), str(calib_file)
    fast = {"EMPAS_RANK_TIMEOUT": "8"}
    die = {**fast, "EMPAS_TEST_DIE_AFTER_CELLS": "3"}  # rank 1 only: exits after 3 cells
    codes, got = _spawn_two(tmp_path, model, calib, ck, [fast, die], "rdv1")
    assert codes == [0, 17], (codes, got)  # rank 0 stopped by itself, rank 1 was "killed"
    kind, msg, *_, t_err = got[0]
    assert kind == "ProfileError", (kind, msg)
    assert f"rank 1 ({socket.gethostname()}) stopped responding" in msg, msg
    assert "after 3 of its" in msg and "rerun the same command" in msg, msg
    # bounded: rank 0 gave up within the timeout (8 s) and polling of rank 1's last cell
    died = (tmp_path / "ck.json.rank1").stat().st_mtime
    assert t_err - died < 8 + 10, t_err - died
    # every rank's checkpoint holds its finished cells: rank 1 its 3, rank 0 all of its share
    done1 = _cells(tmp_path / "ck.json.rank1")
    done0 = _cells(tmp_path / "ck.json.rank0")
    assert len(done1) == 3 and done0 and not done0 & done1
    assert not (tmp_path / "ck.json").exists()  # no merged checkpoint: the run did not finish
    # the same command again: only the unfinished cells are measured, the table is the clean one
    codes, got = _spawn_two(tmp_path, model, calib, ck, [fast, fast], "rdv2")
    assert codes == [0, 0], (codes, got)
    assert got[0][0] == "ok" and got[1][0] == "ok", got
    delta, stderr, dist_info = got[0][1], got[0][2], got[0][3]
    assert np.array_equal(np.array(delta, dtype=float), ref.delta)  # bit-identical on CPU
    assert np.array_equal(np.array(stderr, dtype=float), ref.stderr)
    measured = {r["rank"]: r["measured"] for r in dist_info["ranks"]}
    resumed = {r["rank"]: r["resumed"] for r in dist_info["ranks"]}
    assert resumed == {0: len(done0), 1: 3}, dist_info
    assert sum(measured.values()) == n_cells - len(done0) - 3
    assert _cells(ck) == _cells(tmp_path / "ck.json.rank0") | _cells(tmp_path / "ck.json.rank1")
