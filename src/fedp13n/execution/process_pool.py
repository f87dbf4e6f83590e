"""Run client work in persistent local worker processes, one torch thread each.

Why: client work (a few SGD epochs on small batches) is many small tensor operations that
scale poorly across threads; single-thread workers beat one process with as many threads
on TFF's EMNIST CNN (``bench/bench_executors.py``, ``bench/README.md``) and degrade far
less when cores are oversubscribed. Every task is a pure function run with the same
kernels and thread count, so results are bit-for-bit those of ``InProcessExecutor``.

Design:

* Workers start with ``spawn`` (or ``forkserver``): forking once torch has started its
  thread pools can deadlock. They never re-run the user's ``__main__`` (cloudpickle ships
  functions defined there by value).
* :meth:`LocalProcessExecutor.map` sends ``fn`` (cloudpickled once) to every worker, then
  hands out chunks of tasks (:mod:`~fedp13n.execution.chunks`) as workers become free; each
  worker has its own pipe, so a dead worker is noticed through its process sentinel.
* Faults: a worker that dies is replaced and its chunk run again, up to ``max_retries``
  times (tasks are pure: the numbers are those of an uninterrupted run). With
  ``task_timeout``, each worker publishes in shared memory which task it runs since when;
  a task running longer (a hung or SIGSTOPped worker) ends the map with
  :class:`~fedp13n.execution.base.ClientTaskTimeout` and its worker is replaced.
* :meth:`LocalProcessExecutor.share` never pickles big data per task: objects of the
  share-by-path protocol (:mod:`~fedp13n.execution.sharing`, e.g. ``ClientData``) are
  memory-mapped by the workers from a path (one page cache for all); others are pickled
  once into a temporary file that each worker reads once.
* GPUs: with ``gpus``, worker slot ``i`` is pinned to GPU ``gpu_assignment(num_workers,
  gpus)[i]`` (round robin): the worker sets ``CUDA_VISIBLE_DEVICES`` before CUDA starts
  (:func:`~fedp13n.utils.device.pin_process_to_gpu`), and client work asking for a CUDA
  device runs there. Several workers may share a GPU; a replacement keeps its slot's GPU.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import multiprocessing.connection as mpc
import os
import pickle
import signal
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import cloudpickle

from fedp13n.execution import sharing
from fedp13n.execution.base import ClientTaskTimeout, ClientWorkError, Executor, R, SharedRef, T
from fedp13n.execution.chunks import (
    check_chunk_size,
    chunks,
    default_chunk_size,
    exit_description,
    failure,
    lost_error,
    results_or_raise,
    run_chunk,
    span,
)
from fedp13n.execution.sharing import FileRef, PathRef
from fedp13n.utils.checks import check_positive_int

__all__ = ["LocalProcessExecutor", "default_chunk_size", "usable_cores"]

log = logging.getLogger(__name__)

#: Chunks sent to a worker and not answered yet. One: a chunk is committed to a worker only
#: when it is free, which balances clients of very different sizes (a worker idles only for
#: one message round trip, milliseconds against the tens of milliseconds or more of a client).
_IN_FLIGHT_PER_WORKER = 1

# Slots of a worker's progress array (shared memory, written by the worker).
_MAP, _TASK, _SINCE = 0, 1, 2


# ----------------------------------------------------------------------------------------
# Worker side
# ----------------------------------------------------------------------------------------
def _worker_main(conn: mpc.Connection, threads: int, progress: Any, gpu: int | None) -> None:
    """Loop of one worker process: receive functions and chunks of tasks, send results.

    ``gpu``: the GPU this worker is pinned to (None: not pinned); set before anything can
    start CUDA in this process.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle.
    if gpu is not None:  # first thing that imports torch
        from fedp13n.utils.device import pin_process_to_gpu

        pin_process_to_gpu(gpu)
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set: harmless
        torch.set_num_interop_threads(1)

    fn_blob: tuple[int, bytes] | None = None
    loaded: tuple[int, Callable[[Any], Any]] | None = None
    progress[_TASK] = -1.0
    progress[_SINCE] = time.monotonic()  # ready
    while True:
        try:
            msg = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return  # the driver went away
        kind = msg[0]
        if kind == "stop":
            return
        if kind == "fn":
            fn_blob, loaded = (msg[1], msg[2]), None  # only the latest map's function is needed
        elif kind == "forget":
            sharing.forget(msg[1])
        elif kind == "tasks":
            _, map_id, start, blob = msg

            def started(index: int, map_id: int = map_id) -> None:
                progress[_SINCE] = time.monotonic()
                progress[_TASK] = index
                progress[_MAP] = map_id

            started(start)
            try:
                if loaded is None or loaded[0] != map_id:
                    assert fn_blob is not None and fn_blob[0] == map_id, "function not sent"
                    loaded = (map_id, cloudpickle.loads(fn_blob[1]))
                tasks = cloudpickle.loads(blob)
            except BaseException as exc:  # report everything, the driver decides
                reply = failure(start, exc)
            else:
                reply = run_chunk(loaded[1], start, tasks, before=started)
            try:
                data = cloudpickle.dumps(("done", map_id, start, reply), protocol=5)
            except Exception as exc:
                data = pickle.dumps(("done", map_id, start, failure(start, exc)))
            try:
                conn.send_bytes(data)
            except OSError:
                return  # the driver went away


# ----------------------------------------------------------------------------------------
# Driver side
# ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _main_module_hidden():
    """Start workers without re-running the user's ``__main__`` in them.

    Under "spawn"/"forkserver", multiprocessing re-imports the main script in every child so
    that functions defined there can be unpickled; a script without the
    ``if __name__ == "__main__":`` guard would then start the experiment again in each worker.
    Our workers never need ``__main__`` (cloudpickle ships such functions by value), so the
    main module's path and spec are hidden while a worker starts.
    """
    import sys

    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


#: How often a waiting map checks its workers are alive (seconds), and how long a worker
#: with tasks may be stopped by the system before the map fails (seconds).
LIVENESS_INTERVAL = 2.0
STOPPED_GRACE = 30.0


def _is_stopped(pid: int) -> bool:
    """Whether the system has stopped process ``pid`` (state T or t in /proc; Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in (b"T", b"t")


class _Sent(NamedTuple):
    map_id: int
    start: int
    count: int
    at: float  # time.monotonic() when sent


class _Worker:
    def __init__(self, ctx: Any, threads: int, slot: int, gpu: int | None = None) -> None:
        parent, child = ctx.Pipe(duplex=True)
        #: [map id, task index, since (monotonic)]: what the worker runs, written by it.
        self.progress = ctx.RawArray("d", 3)
        self.process = ctx.Process(
            target=_worker_main,
            args=(child, threads, self.progress, gpu),
            name=f"fedp13n-worker-{slot}",
            daemon=True,
        )
        with _main_module_hidden():
            self.process.start()
        child.close()
        self.conn: mpc.Connection = parent
        #: Chunks sent and not answered yet, in order.
        self.in_flight: collections.deque[_Sent] = collections.deque()

    def send(self, msg: tuple) -> None:
        """Send a message; a worker that died meanwhile is noticed by its sentinel."""
        with contextlib.suppress(OSError):
            self.conn.send_bytes(pickle.dumps(msg, protocol=5))

    def running(self) -> tuple[int, float] | None:
        """(task index, since) of the in-flight chunk's current task; None if not ready."""
        sent = self.in_flight[0]
        while True:  # the worker writes three slots: read until two reads agree
            a, b = self.progress[:], self.progress[:]
            if a == b:
                break
        if a[_SINCE] == 0.0:
            return None  # still starting (importing torch)
        if int(a[_MAP]) == sent.map_id and sent.start <= a[_TASK] < sent.start + sent.count:
            return int(a[_TASK]), a[_SINCE]
        return sent.start, max(sent.at, a[_SINCE])  # sent, not started yet

    def end(self) -> int | None:
        """Kill the process if it still runs, close the pipe; returns its exit code."""
        if self.process.is_alive():
            with contextlib.suppress(OSError):
                self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()
        return self.process.exitcode


def _check_gpus(gpus: Any) -> tuple[int, ...]:
    """``gpus`` as a tuple of GPU indices, or a one-line ValueError naming the fix."""
    ok = isinstance(gpus, Sequence) and not isinstance(gpus, (str, bytes)) and len(gpus) > 0
    ok = ok and all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gpus)
    if not ok:
        raise ValueError(
            f"gpus must be a non-empty list of GPU indices (integers >= 0), e.g. gpus=[0] or "
            f"gpus=[0, 1], got {gpus!r}; pass gpus=None to run on the CPU."
        )
    return tuple(gpus)


def _shutdown(workers: list[_Worker], tmpdir: str | None) -> None:
    """Stop workers and remove shared files (also run by the finalizer at exit / GC)."""
    for w in workers:
        w.send(("stop",))
    for w in workers:
        w.process.join(timeout=5)
        if w.process.is_alive():
            w.process.kill()
            w.process.join(timeout=5)
        w.conn.close()
    workers.clear()
    if tmpdir is not None:
        sharing.remove_share_dir(tmpdir)


class LocalProcessExecutor(Executor):
    """Persistent local worker processes, each running client work with ``threads_per_worker``
    torch threads.

    Args:
        num_workers: number of worker processes; default: the usable cores divided by
            ``threads_per_worker``.
        threads_per_worker: torch threads per worker (1 keeps results identical to
            ``InProcessExecutor(threads_per_worker=1)``).
        start_method: ``"spawn"`` (default, portable) or ``"forkserver"``; never ``"fork"``.
        chunk_size: tasks per message; default :func:`default_chunk_size`.
        max_retries: times the tasks of a worker that died are run again (on a replacement
            worker) before the map fails; 0: fail at once.
        task_timeout: seconds one task may run (None: no limit); a task running longer,
            e.g. on a hung or stopped worker, fails the map with :class:`ClientTaskTimeout`.
        gpus: GPU indices (as numbered on this machine) to pin the workers to, round robin
            (``[0, 1]`` and 4 workers: GPUs 0, 1, 0, 1), so that client work asking for a
            CUDA device runs on its worker's GPU; several workers may share a GPU
            (``gpus=[0], num_workers=4``). With ``gpus``, ``num_workers`` defaults to
            ``len(gpus)``. None (default): workers are not pinned.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        threads_per_worker: int = 1,
        *,
        start_method: str = "spawn",
        chunk_size: int | None = None,
        max_retries: int = 3,
        task_timeout: float | None = None,
        gpus: Sequence[int] | None = None,
    ) -> None:
        gpus = _check_gpus(gpus) if gpus is not None else None
        threads_per_worker = check_positive_int("threads_per_worker", threads_per_worker)
        if num_workers is None:
            num_workers = len(gpus) if gpus else max(1, usable_cores() // threads_per_worker)
        num_workers = check_positive_int("num_workers", num_workers)
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(
                f"start_method must be 'spawn' or 'forkserver', got {start_method!r} "
                "('fork' is unsafe once torch has started its thread pools)."
            )
        self.chunk_size = check_chunk_size(chunk_size)
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}.")
        if task_timeout is not None and not task_timeout > 0:
            raise ValueError(
                f"task_timeout must be positive seconds or None, got {task_timeout!r}."
            )
        sharing.sweep_stale_dirs()  # left by processes killed outright
        self.threads_per_worker = threads_per_worker
        self.max_retries = max_retries
        self.task_timeout = task_timeout
        #: The GPUs the workers are pinned to (None: not pinned).
        self.gpus: tuple[int, ...] | None = gpus
        #: The GPU of each worker slot (None: not pinned); a replacement keeps its slot's.
        self._slot_gpus: list[int | None] = [None] * num_workers
        if gpus:
            from fedp13n.utils.device import gpu_assignment  # imports torch: only when needed

            self._slot_gpus = list(gpu_assignment(num_workers, gpus))
        #: Seconds a worker holding tasks may stay stopped before the map fails.
        self.stopped_grace = STOPPED_GRACE
        self._stopped_since: dict[int, float] = {}
        self._ctx = multiprocessing.get_context(start_method)
        self._workers = [self._start_worker(i) for i in range(num_workers)]
        self._tmpdir: str | None = None
        self._forget: list[str] = []
        self._forget_lock = threading.Lock()
        self._map_id = 0
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, None)

    # -- Executor interface -----------------------------------------------------------------
    @property
    def num_workers(self) -> int:
        return len(self._workers)

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        self._check_open()
        tasks = list(tasks)
        if not tasks:
            return []
        try:
            fn_blob = cloudpickle.dumps(fn, protocol=5)
        except Exception as exc:
            raise TypeError(
                f"cannot send {fn!r} to worker processes: it does not pickle ({exc}). Use a "
                "function (or closure) over picklable values, or InProcessExecutor."
            ) from exc
        self._settle_workers()
        self._map_id += 1
        with self._forget_lock:
            forget = self._forget[:]
            self._forget.clear()
        for w in self._workers:
            if forget:
                w.send(("forget", forget))
            w.send(("fn", self._map_id, fn_blob))
        return _MapRun(self, self._map_id, fn_blob, tasks).run()

    def share(self, obj: T) -> SharedRef[T]:
        """Publish ``obj`` to the workers without pickling it into every task.

        An object that follows the share-by-path protocol (:mod:`fedp13n.execution.sharing`;
        a ``ClientData``) is shared by its path, after saving it to a temporary directory if
        it has none: either way, workers memory-map it. Anything else is pickled once into
        a temporary file. The data must not change while the ref is in use.
        """
        self._check_open()
        if sharing.shares_by_path(obj):
            path = obj.to_shared_path(None)  # type: ignore[attr-defined]
            if path is None:
                scratch = Path(self._temp_dir()) / f"{type(obj).__name__}-{uuid.uuid4().hex}"
                path = obj.to_shared_path(scratch)  # type: ignore[attr-defined]
            return PathRef(type(obj), path, local=obj)
        token = uuid.uuid4().hex
        file = os.path.join(self._temp_dir(), f"{token}.pkl")
        with open(file, "wb") as f:
            cloudpickle.dump(obj, f, protocol=5)
        ref = FileRef(token, file, local=obj)
        weakref.finalize(ref, _release, file, token, self._forget, self._forget_lock)
        return ref

    def close(self) -> None:
        """Stop the workers and delete the shared files; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        _shutdown(self._workers, self._tmpdir)

    def __repr__(self) -> str:
        gpus = f", gpus={list(self.gpus)}" if self.gpus else ""
        return (
            f"LocalProcessExecutor(num_workers={self.num_workers}, "
            f"threads_per_worker={self.threads_per_worker}{gpus})"
        )

    # -- internals --------------------------------------------------------------------------
    def _start_worker(self, slot: int) -> _Worker:
        return _Worker(self._ctx, self.threads_per_worker, slot, self._slot_gpus[slot])

    def _temp_dir(self) -> str:
        if self._tmpdir is None:
            self._tmpdir = sharing.make_share_dir()
            # Remove the directory even if close() is never called.
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _shutdown, self._workers, self._tmpdir)
        return self._tmpdir

    def _replace(self, w: _Worker, fn: tuple[int, bytes] | None = None) -> int | None:
        """Start a worker in ``w``'s slot (sent ``fn``, a map's ``(id, function)``, if
        given); returns ``w``'s exit code."""
        code = w.end()
        slot = self._workers.index(w)
        new = self._workers[slot] = self._start_worker(slot)
        if fn is not None:
            new.send(("fn", *fn))
        return code

    def _wait_timeout(self) -> float | None:
        """Seconds until the next task deadline or liveness check."""
        if self.task_timeout is None:
            return LIVENESS_INTERVAL
        now, wait = time.monotonic(), min(self.task_timeout, LIVENESS_INTERVAL)
        for w in self._workers:
            if w.in_flight and (running := w.running()) is not None:
                wait = min(wait, running[1] + self.task_timeout - now)
        return max(0.01, wait)

    def _check_stopped(self, fn: tuple[int, bytes]) -> None:
        """The liveness check that is always on: a worker with work that the system has
        stopped (SIGSTOP, a debugger) for more than ``stopped_grace`` seconds fails the map
        instead of stalling it forever."""
        now = time.monotonic()
        for w in list(self._workers):
            if not w.in_flight or not _is_stopped(w.process.pid):
                self._stopped_since.pop(w.process.pid, None)
                continue
            since = self._stopped_since.setdefault(w.process.pid, now)
            if now - since > self.stopped_grace:
                pid = w.process.pid
                self._stopped_since.pop(pid, None)
                self._replace(w, fn)
                raise ClientWorkError(
                    f"worker process {pid} has been stopped (SIGSTOP or a debugger) for "
                    f"{now - since:.0f} s while it held tasks, so the map cannot finish; it was "
                    "killed and replaced. Rerun (or resume) the run; do not stop workers."
                )

    def _check_deadlines(self, fn: tuple[int, bytes]) -> None:
        assert self.task_timeout is not None
        now = time.monotonic()
        for w in list(self._workers):
            if not w.in_flight or w.in_flight[0].map_id != fn[0]:
                continue
            running = w.running()
            if running is None or now - running[1] <= self.task_timeout:
                continue
            task, since = running
            pid = w.process.pid
            self._replace(w, fn)
            raise ClientTaskTimeout(
                f"task {task} did not finish within task_timeout={self.task_timeout:g} s "
                f"(running for {now - since:.1f} s in worker process {pid}): the task hangs "
                "or its worker was stopped or starved. The worker was killed and replaced; "
                "raise task_timeout if the task is just slow."
            )

    def _settle_workers(self) -> None:
        """Before a map: collect (and drop) the late answers of a map that failed, and
        replace workers that died since (or hang, with ``task_timeout``).

        Why wait for late answers: a worker blocked sending a large result would never
        read a large message sent to it meanwhile, and both processes would wait forever.
        """
        for w in list(self._workers):
            alive = True
            while w.in_flight and alive:
                ready = mpc.wait([w.conn, w.process.sentinel], timeout=self.task_timeout)
                if not ready:
                    alive = False  # hung: replaced below
                elif w.conn in ready:
                    try:
                        w.conn.recv_bytes()
                        w.in_flight.popleft()
                        continue
                    except (EOFError, OSError):
                        alive = False
                alive = alive and w.conn.poll()
            if not alive or not w.process.is_alive():
                self._replace(w)


class _MapRun:
    """One :meth:`LocalProcessExecutor.map`: hands chunks out to free workers, collects
    the replies, and hands the chunks of a worker that died out again (or gives up)."""

    def __init__(
        self, ex: LocalProcessExecutor, map_id: int, fn_blob: bytes, tasks: list[Any]
    ) -> None:
        self.ex, self.map_id, self.fn, self.tasks = ex, map_id, (map_id, fn_blob), tasks
        size = ex.chunk_size or default_chunk_size(len(tasks), ex.num_workers)
        self.pending = collections.deque(chunks(len(tasks), size))
        self.to_do = len(self.pending)  # chunks not answered yet
        self.lost_times: collections.Counter[int] = collections.Counter()  # by chunk start
        self.results: list[Any] = [None] * len(tasks)

    def run(self) -> list[Any]:
        workers = self.ex._workers  # replaced in place: the same list throughout
        for w in workers:
            self.feed(w)
        while self.to_do:
            by_conn = {w.conn: w for w in workers}
            by_sentinel = {w.process.sentinel: w for w in workers}
            ready = mpc.wait([*by_conn, *by_sentinel], timeout=self.ex._wait_timeout())
            # Replies first: a worker may have answered just before it exited.
            for w in (by_conn[o] for o in ready if o in by_conn):
                if w in workers:
                    self.receive(w)
            for w in (by_sentinel[o] for o in ready if o in by_sentinel):
                if w in workers and not w.conn.poll():
                    self.lost(w)
            if self.ex.task_timeout is not None:
                self.ex._check_deadlines(self.fn)
            self.ex._check_stopped(self.fn)
            for w in workers:
                self.feed(w)
        return self.results

    def feed(self, w: _Worker) -> None:
        while self.pending and len(w.in_flight) < _IN_FLIGHT_PER_WORKER:
            start, count = self.pending.popleft()
            try:
                blob = cloudpickle.dumps(self.tasks[start : start + count], protocol=5)
            except Exception as exc:
                raise TypeError(
                    f"task {start} (or one of the {count} from there) does not "
                    f"pickle: {exc}. Tasks must be picklable; share big objects with "
                    "executor.share() and pass the ref."
                ) from exc
            w.in_flight.append(_Sent(self.map_id, start, count, time.monotonic()))
            w.send(("tasks", self.map_id, start, blob))

    def receive(self, w: _Worker) -> None:
        try:
            blob = w.conn.recv_bytes()
        except (EOFError, OSError):
            return self.lost(w)
        sent = w.in_flight.popleft()
        if sent.map_id != self.map_id:
            return  # a late answer to a map that failed earlier
        try:
            _, _, start, reply = pickle.loads(blob)
        except Exception as exc:
            raise ClientWorkError(
                f"the results of tasks {span(sent.start, sent.count)} could not be "
                f"unpickled in the driver: {type(exc).__name__}: {exc}"
            ) from exc
        where = f"in worker process {w.process.pid}"
        self.results[start : start + sent.count] = results_or_raise(reply, where)
        self.to_do -= 1

    def lost(self, w: _Worker) -> None:
        """``w`` died: replace it, and hand its chunks out again (or give up)."""
        code = self.ex._replace(w, self.fn)
        gone = [(s.start, s.count) for s in w.in_flight if s.map_id == self.map_id]
        how = f"worker process {w.process.pid} {exit_description(code)}"
        for start, _ in gone:
            self.lost_times[start] += 1
        worst = max((self.lost_times[s] for s, _ in gone), default=0)
        if worst > self.ex.max_retries:
            raise lost_error(gone, how, worst)
        if gone:
            log.warning(
                "%s before returning tasks %s; running them again on a replacement worker",
                how,
                ", ".join(span(s, c) for s, c in gone),
            )
            self.pending.extendleft(reversed(gone))


def _release(file: str, token: str, forget: list[str], lock: threading.Lock) -> None:
    """A FileRef was dropped: delete its file and queue a message telling workers to drop it."""
    with contextlib.suppress(OSError):
        os.unlink(file)
    with lock:
        forget.append(token)


def usable_cores() -> int:
    """Cores this process may run on (respects CPU affinity / container limits)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
