"""Run client work in persistent local worker processes, one torch thread each.

Why processes with one thread each: client work (a few SGD epochs on small batches) is
made of many small tensor operations that scale poorly across threads: single-thread
workers beat one process with as many threads on TFF's EMNIST CNN
(``bench/bench_executors.py``; figures in ``bench/README.md``), and multi-threaded torch
degrades much more than single-thread workers when cores are oversubscribed. Results
are bit-for-bit those of
:class:`~fedp13n.execution.in_process.InProcessExecutor` with the same thread count,
because every task is a pure function and runs the same kernels with the same number of
threads, whichever worker picks it up.

Design:

* Workers start with the ``spawn`` method (``forkserver`` also works): forking a process
  after torch has started its thread pools can deadlock. They never re-run the user's
  ``__main__`` (functions defined there travel by value with cloudpickle).
* :meth:`LocalProcessExecutor.map` serializes ``fn`` with cloudpickle once per call (so
  lambdas and closures work), sends it to every worker, then hands out chunks of tasks
  (:mod:`~fedp13n.execution.chunks`, the protocol shared with the Ray executor) as workers
  become free; each worker talks to the driver over its own pipe, so a dead worker is
  noticed through its process sentinel instead of hanging the driver.
* Faults: a worker that dies (killed by the OS, a crash in native code) is replaced and the
  chunk it was running is run again, up to ``max_retries`` times (safe: tasks are pure
  functions of their inputs, so the numbers are those of an uninterrupted run). With
  ``task_timeout``, each worker publishes which task it runs since when in shared memory,
  and a task running longer (a hung or SIGSTOPped worker) ends the map with
  :class:`~fedp13n.execution.base.ClientTaskTimeout`; its worker is killed and replaced.
* :meth:`LocalProcessExecutor.share` never pickles big data per task: objects that follow
  the share-by-path protocol (:mod:`~fedp13n.execution.sharing`; e.g. ``ClientData``) are
  opened by the workers from a path (memory-mapped, so all workers share the page cache),
  other objects are pickled once into a temporary file that each worker reads once and
  keeps until the driver drops the reference.
* GPUs: with ``gpus``, worker slot ``i`` is pinned to GPU
  ``gpu_assignment(num_workers, gpus)[i]`` (round robin;
  :func:`~fedp13n.utils.device.gpu_assignment`): the worker sets ``CUDA_VISIBLE_DEVICES``
  first thing (:func:`~fedp13n.utils.device.pin_process_to_gpu`), before CUDA starts in
  it, and client work asking for a CUDA device runs there
  (:func:`~fedp13n.utils.device.work_device`). Several worker processes can share one GPU
  (``gpus=[0], num_workers=N``), one or more per GPU on a multi-GPU machine; a replacement
  worker keeps its slot's GPU.
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

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


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
        if gpus is not None:
            gpus = _check_gpus(gpus)
        if not isinstance(threads_per_worker, int) or threads_per_worker < 1:
            raise ValueError(
                f"threads_per_worker must be a positive integer, got {threads_per_worker!r}."
            )
        if num_workers is None:
            num_workers = len(gpus) if gpus else max(1, usable_cores() // threads_per_worker)
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be a positive integer, got {num_workers!r}.")
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(
                f"start_method must be 'spawn' or 'forkserver', got {start_method!r} "
                "('fork' is unsafe once torch has started its thread pools)."
            )
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}.")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}.")
        if task_timeout is not None and not task_timeout > 0:
            raise ValueError(
                f"task_timeout must be positive seconds or None, got {task_timeout!r}."
            )
        sharing.sweep_stale_dirs()  # left by processes killed outright
        self.threads_per_worker = threads_per_worker
        self.chunk_size = chunk_size
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
        self._workers: list[_Worker] = [
            _Worker(self._ctx, threads_per_worker, i, self._slot_gpus[i])
            for i in range(num_workers)
        ]
        self._tmpdir: str | None = None
        self._forget: list[str] = []
        self._forget_lock = threading.Lock()
        self._map_id = 0
        self._closed = False
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
        map_id = self._map_id
        size = self.chunk_size or default_chunk_size(len(tasks), self.num_workers)
        pending = collections.deque(chunks(len(tasks), size))
        n_chunks, done = len(pending), 0
        lost_times: collections.Counter[int] = collections.Counter()  # by chunk start
        results: list[Any] = [None] * len(tasks)

        with self._forget_lock:
            forget = self._forget[:]
            self._forget.clear()
        for w in self._workers:
            if forget:
                w.send(("forget", forget))
            w.send(("fn", map_id, fn_blob))

        def feed(w: _Worker) -> None:
            while pending and len(w.in_flight) < _IN_FLIGHT_PER_WORKER:
                start, count = pending.popleft()
                try:
                    blob = cloudpickle.dumps(tasks[start : start + count], protocol=5)
                except Exception as exc:
                    raise TypeError(
                        f"task {start} (or one of the {count} from there) does not "
                        f"pickle: {exc}. Tasks must be picklable; share big objects with "
                        "executor.share() and pass the ref."
                    ) from exc
                w.in_flight.append(_Sent(map_id, start, count, time.monotonic()))
                w.send(("tasks", map_id, start, blob))

        def lost(w: _Worker) -> None:
            """``w`` died: replace it, and hand its chunks out again (or give up)."""
            new, code = self._replace(w)
            new.send(("fn", map_id, fn_blob))
            gone = [(s.start, s.count) for s in w.in_flight if s.map_id == map_id]
            how = f"worker process {w.process.pid} {exit_description(code)}"
            for start, _ in gone:
                lost_times[start] += 1
            worst = max((lost_times[s] for s, _ in gone), default=0)
            if worst > self.max_retries:
                raise lost_error(gone, how, worst)
            if gone:
                log.warning(
                    "%s before returning tasks %s; running them again on a replacement worker",
                    how,
                    ", ".join(span(s, c) for s, c in gone),
                )
                pending.extendleft(reversed(gone))

        for w in self._workers:
            feed(w)
        while done < n_chunks:
            by_conn = {w.conn: w for w in self._workers}
            by_sentinel = {w.process.sentinel: w for w in self._workers}
            ready = mpc.wait([*by_conn, *by_sentinel], timeout=self._wait_timeout())
            # Replies first: a worker may have answered just before it exited.
            for obj in ready:
                w = by_conn.get(obj)
                if w is None or w not in self._workers:
                    continue
                try:
                    blob = w.conn.recv_bytes()
                except (EOFError, OSError):
                    lost(w)
                    continue
                sent = w.in_flight.popleft()
                if sent.map_id != map_id:
                    continue  # a late answer to a map that failed earlier
                try:
                    _, _, start, reply = pickle.loads(blob)
                except Exception as exc:
                    raise ClientWorkError(
                        f"the results of tasks {span(sent.start, sent.count)} could not be "
                        f"unpickled in the driver: {type(exc).__name__}: {exc}"
                    ) from exc
                where = f"in worker process {w.process.pid}"
                results[start : start + sent.count] = results_or_raise(reply, where)
                done += 1
            for obj in ready:
                w = by_sentinel.get(obj)
                if w is not None and w in self._workers and not w.conn.poll():
                    lost(w)
            if self.task_timeout is not None:
                self._check_deadlines(map_id, fn_blob)
            self._check_stopped(map_id, fn_blob)
            for w in self._workers:
                feed(w)
        return results

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
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this LocalProcessExecutor is closed; create a new one.")

    def _temp_dir(self) -> str:
        if self._tmpdir is None:
            self._tmpdir = sharing.make_share_dir()
            # Remove the directory even if close() is never called.
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _shutdown, self._workers, self._tmpdir)
        return self._tmpdir

    def _replace(self, w: _Worker) -> tuple[_Worker, int | None]:
        """Start a worker in ``w``'s slot; returns it and ``w``'s exit code."""
        if w.process.is_alive():
            w.kill()
        else:
            w.process.join(timeout=5)
            w.conn.close()
        slot = self._workers.index(w)
        new = self._workers[slot] = _Worker(
            self._ctx, self.threads_per_worker, slot, self._slot_gpus[slot]
        )
        return new, w.process.exitcode

    def _wait_timeout(self) -> float | None:
        """Seconds until the next task deadline or liveness check."""
        if self.task_timeout is None:
            return LIVENESS_INTERVAL
        now, wait = time.monotonic(), min(self.task_timeout, LIVENESS_INTERVAL)
        for w in self._workers:
            if w.in_flight and (running := w.running()) is not None:
                wait = min(wait, running[1] + self.task_timeout - now)
        return max(0.01, wait)

    def _check_stopped(self, map_id: int, fn_blob: bytes) -> None:
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
                self._replace(w)[0].send(("fn", map_id, fn_blob))
                raise ClientWorkError(
                    f"worker process {pid} has been stopped (SIGSTOP or a debugger) for "
                    f"{now - since:.0f} s while it held tasks, so the map cannot finish; it was "
                    "killed and replaced. Rerun (or resume) the run; do not stop workers."
                )

    def _check_deadlines(self, map_id: int, fn_blob: bytes) -> None:
        assert self.task_timeout is not None
        now = time.monotonic()
        for w in list(self._workers):
            if not w.in_flight or w.in_flight[0].map_id != map_id:
                continue
            running = w.running()
            if running is None or now - running[1] <= self.task_timeout:
                continue
            task, since = running
            pid = w.process.pid
            self._replace(w)[0].send(("fn", map_id, fn_blob))
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
