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
    try:
        empas.profile(model, calib, seed=rank, progress=False, **SETTINGS)  # seeds differ
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
