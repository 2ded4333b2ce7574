"""Sharded profiling on ``torch.distributed``: every rank measures the same
baseline on the same tokens, takes a deterministic, cost-balanced share of the
(unit, choice) cells, and the per-sequence losses are gathered so that every rank
builds the same profile (rank 0 writes it).

EMPAS does not run its own engine: the process group is the caller's (an
initialized ``torch.distributed`` group, e.g. under ``torchrun``); gloo on CPU,
NCCL on GPUs. The messages are small (per-sequence losses), sent as pickled
objects, so the float64 losses arrive bit-exactly."""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import math
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ProfileError

__all__ = [
    "DEFAULT_RANK_TIMEOUT",
    "DEFAULT_START_TIMEOUT",
    "Group",
    "Monitor",
    "cell_cost",
    "current_group",
    "init_from_env",
    "rank_timeout",
    "share",
]

DEFAULT_RANK_TIMEOUT = 120.0  # seconds a rank may go without a heartbeat
DEFAULT_START_TIMEOUT = 600.0  # seconds a rank may take to start after another (model loading)
_CALLS = itertools.count()  # profiles measured under a group in this process (same on all ranks)


def cell_cost(start: int, n_blocks: int, cache: bool = True) -> int:
    """Blocks (plus one for the head and loss) an experiment whose first changed
    block is ``start`` runs: with the cache it starts at its own block; without,
    or for the embedding (``start`` -1), it runs the whole model."""
    if not cache or start < 0:
        return n_blocks + 1
    return max(n_blocks - start, 0) + 1


def share(costs: Sequence[float], n_ranks: int) -> list[list[int]]:
    """Which cells (indices into ``costs``) each of ``n_ranks`` ranks measures:
    greedy longest-processing-time assignment (cells by cost descending, ties by
    index; each to the least-loaded rank, ties by rank number). Deterministic
    (no randomness, no dependence on timing) and within 4/3 of the optimal
    makespan. Each rank's list is in ascending index order."""
    if n_ranks < 1:
        raise ValueError(f"n_ranks must be >= 1, got {n_ranks}")
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    heap = [(0.0, r) for r in range(n_ranks)]
    out: list[list[int]] = [[] for _ in range(n_ranks)]
    for i in order:
        load, r = heapq.heappop(heap)
        out[r].append(i)
        heapq.heappush(heap, (load + float(costs[i]), r))
    return [sorted(x) for x in out]


def settings_hash(obj: Any) -> str:
    """A short digest of a JSON-able settings record."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Group:
    """The rank and size of the initialized default process group."""

    rank: int
    world: int
    backend: str
    monitor: Monitor | None = None  # set while a profile measures: liveness of the ranks
    _calls: int = 0

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank. With a monitor, the
        ranks first meet in the store (a dead or failed rank is named there instead
        of hanging the collective), and a collective that fails is explained."""
        import torch.distributed as dist

        self._calls += 1
        if self.monitor is not None:
            self.monitor.wait(f"gather{self._calls}")
        out: list[Any] = [None] * self.world
        try:
            dist.all_gather_object(out, obj)
        except Exception as exc:
            if self.monitor is None:
                raise
            raise self.monitor.explain(exc) from exc
        return out

    def check_same(self, settings: Any, what: str = "settings") -> None:
        """Refuses (ProfileError on every rank) when the ranks' ``settings``
        differ, naming the ranks that differ from rank 0."""
        mine = settings_hash(settings)
        hashes = self.gather(mine)
        bad = [r for r, h in enumerate(hashes) if h != hashes[0]]
        if bad:
            raise ProfileError(
                f"torch.distributed: the {what} of rank(s) {bad} differ from rank 0's "
                f"(hashes {[hashes[r] for r in bad]} vs {hashes[0]}): every rank must profile "
                "the same model on the same calibration with the same settings"
            )

    def host(self) -> str:
        return socket.gethostname()


def current_group() -> Group | None:
    """The default process group when ``torch.distributed`` is initialized with
    more than one rank, else None (a single-process run)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch without distributed
        return None
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    if world < 2:
        return None
    return Group(dist.get_rank(), world, str(dist.get_backend()))


def init_from_env(device: str | None) -> tuple[bool, str | None]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) initializes the
    default process group (NCCL when the device is CUDA, else gloo) unless it
    already is; returns ``(initialized here, the device for this rank)``: a CUDA
    device becomes ``cuda:<LOCAL_RANK>``."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False, device
    import torch
    import torch.distributed as dist

    cuda = device.startswith("cuda") if device else torch.cuda.is_available()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if dist.is_initialized():
        return False, device
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True, device


# -- liveness: heartbeats through the process group's store ---------------------------


def rank_timeout(var: str = "EMPAS_RANK_TIMEOUT", default: float = DEFAULT_RANK_TIMEOUT) -> float:
    """Seconds from the environment variable ``var``: ``EMPAS_RANK_TIMEOUT``, how
    long a rank may go without a heartbeat before the others call it dead
    (default 120); ``EMPAS_RANK_START_TIMEOUT``, how long a rank may take to start
    measuring after another did (loading the model; default 600)."""
    raw = os.environ.get(var)
    if raw is None or raw.strip() == "":
        return default
    try:
        v = float(raw)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{var} must be a positive number of seconds, got {raw!r}")
    return v


RERUN = (
    "every rank's checkpoint keeps its finished cells: rerun the same command to measure "
    "only the rest"
)


class Monitor:
    """Liveness of the ranks of one sharded profile, through the key-value store
    of the process group (torchrun's TCPStore, or the store of the init method):
    a background thread writes this rank's heartbeat (host, cells done) every
    ``interval`` seconds and watches the next rank's (a ring: each rank is
    watched by one other, so the store traffic grows with the rank count, not its
    square). A rank whose heartbeat stops changing for ``timeout`` seconds (killed,
    its machine gone) or that leaves with an error (:meth:`leave`) is posted under
    one ``problem`` key that every rank polls; :meth:`check` (between cells) and
    :meth:`wait` (the rendezvous before a collective) then raise ProfileError on
    every surviving rank, naming the rank and its host, instead of hanging in the
    collective. Only the monitor's own keys are used (prefixed per profile call)."""

    def __init__(
        self,
        group: Group,
        timeout: float | None = None,
        start_timeout: float | None = None,
        interval: float | None = None,
        store=None,
    ):
        import torch.distributed as dist

        self.group = group
        self.timeout = rank_timeout() if timeout is None else float(timeout)
        self.start_timeout = (
            max(self.timeout, rank_timeout("EMPAS_RANK_START_TIMEOUT", DEFAULT_START_TIMEOUT))
            if start_timeout is None
            else float(start_timeout)
        )
        self.interval = interval if interval is not None else min(max(self.timeout / 10, 0.05), 2.0)
        base = store if store is not None else dist.distributed_c10d._get_default_store()
        self.store = dist.PrefixStore(f"empas/profile/{next(_CALLS)}/", base)
        self.host = group.host()
        self.done, self.total = 0, 0  # this rank's cells: written into its heartbeat
        self._problem: tuple[int | None, str] | None = None  # (the rank at fault, message)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beats = 0
        self._lock = threading.Lock()
        watched = (group.rank + 1) % group.world
        self._watched = watched if watched != group.rank else None
        self._seen: tuple[str, float] | None = None  # the watched heartbeat, when it last changed

    # -- the thread ----------------------------------------------------------------
    def start(self) -> Monitor:
        self._beat()
        self._seen = None
        self._since = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="empas-rank-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.interval))
            self._thread = None

    def _beat(self) -> None:
        with self._lock:
            self._beats += 1
            rec = {"beat": self._beats, "host": self.host, "done": self.done, "total": self.total}
            self.store.set(f"hb/{self.group.rank}", json.dumps(rec))

    def progress(self, done: int) -> None:
        """This rank has ``done`` cells (in its checkpoint): a heartbeat saying so
        now, so that a rank killed right after is reported with its count."""
        self.done = done
        try:
            self._beat()
        except Exception:  # noqa: S110 - the store is gone: the thread reports it
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
                self._watch()
                if self._problem is None and self.store.check(["problem"]):
                    rec = json.loads(self.store.get("problem").decode())
                    self._problem = (rec["rank"], rec["message"])
            except Exception as exc:  # the store itself is gone
                if self._problem is None:
                    self._problem = (
                        None,
                        f"torch.distributed: the process group's store is unreachable "
                        f"({type(exc).__name__}: {exc}); the process hosting it is gone (the "
                        "torchrun agent, or rank 0 under a plain init_process_group), so a rank "
                        f"or its machine died; {RERUN}",
                    )
                return

    def _watch(self) -> None:
        r = self._watched
        if r is None:
            return
        now = time.monotonic()
        key = f"hb/{r}"
        if self.store.check([key]):
            v = self.store.get(key).decode()
            if self._seen is None or self._seen[0] != v:
                self._seen = (v, now)
        last = self._seen[1] if self._seen is not None else self._since
        if now - last <= (self.timeout if self._seen is not None else self.start_timeout):
            return
        if self._seen is None:
            msg = (
                f"torch.distributed: rank {r} never started measuring: no heartbeat within "
                f"{now - last:.0f} s of this rank's start (EMPAS_RANK_START_TIMEOUT="
                f"{self.start_timeout:g}); it died before measuring (loading the model?), or "
                "loads it much more slowly than this rank (raise EMPAS_RANK_START_TIMEOUT)"
            )
        else:
            rec = json.loads(self._seen[0])
            msg = (
                f"torch.distributed: rank {r} ({rec['host']}) stopped responding: no heartbeat "
                f"for {now - last:.0f} s (EMPAS_RANK_TIMEOUT={self.timeout:g}), last seen after "
                f"{rec['done']} of its {rec['total']} cells; it was killed or its machine is "
                f"down; {RERUN}"
            )
        self.post(r, msg)

    # -- the main thread -----------------------------------------------------------
    def post(self, rank: int, msg: str) -> None:
        """Tells every rank to stop with ``msg`` about ``rank`` (the first posted wins)."""
        if self._problem is None:
            self._problem = (rank, msg)
        try:
            if not self.store.check(["problem"]):
                self.store.set("problem", json.dumps({"rank": rank, "message": msg}))
        except Exception:  # noqa: S110 - the store is gone: the others see that themselves
            pass

    def leave(self, exc: BaseException) -> None:
        """This rank stops with an error: the others stop too, naming it."""
        what = f"{type(exc).__name__}: {exc}"
        if len(what) > 600:
            what = what[:600] + "..."
        self.post(
            self.group.rank,
            f"torch.distributed: rank {self.group.rank} ({self.host}) failed after "
            f"{self.done} of its {self.total} cells: {what}; {RERUN}",
        )

    def check(self) -> None:
        """ProfileError when another rank died or failed."""
        if self._problem is not None and self._problem[0] != self.group.rank:
            raise ProfileError(self._problem[1])

    def wait(self, phase: str) -> None:
        """Returns once every rank has arrived at ``phase``; ProfileError as soon
        as a rank is known dead or failed (it never hangs on a dead rank)."""
        self.store.set(f"at/{phase}/{self.group.rank}", "1")
        keys = [f"at/{phase}/{r}" for r in range(self.group.world)]
        while True:
            self.check()
            if self.store.check(keys):
                return
            if self._thread is None or not self._thread.is_alive():
                self.check()  # the thread ended on a store error: say so
            time.sleep(min(self.interval, 0.5))

    def explain(self, exc: BaseException) -> ProfileError:
        """A collective failed (a peer vanished mid-collective): the dead rank as
        the monitor finds it within ``timeout``, else the backend's error."""
        deadline = time.monotonic() + self.timeout + 2 * self.interval
        while self._problem is None and time.monotonic() < deadline:
            if self._thread is None or not self._thread.is_alive():
                break
            time.sleep(min(self.interval, 0.5))
        if self._problem is not None:
            return ProfileError(self._problem[1])
        return ProfileError(
            f"torch.distributed: a collective failed ({type(exc).__name__}: {exc}); {RERUN}"
        )


def die_for_tests(rank: int, done: int) -> None:
    """Internal, for the tests only: ``EMPAS_TEST_DIE_AFTER_CELLS=N`` (any rank) or
    ``N@R`` (rank R) makes the process exit abruptly (no cleanup, like a kill)
    once it has measured and saved N cells."""
    spec = os.environ.get("EMPAS_TEST_DIE_AFTER_CELLS")
    if not spec:
        return
    n, _, r = spec.partition("@")
    if int(n) == done and (not r or int(r) == rank):
        os._exit(17)
