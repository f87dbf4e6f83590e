"""Run client work in persistent local worker processes, one torch thread each.

Why processes with one thread each: client work (a few SGD epochs on small batches) is
made of many small tensor operations that scale poorly across threads. Training TFF's
conv-dropout EMNIST CNN (batch 20, 10 clients per round) on a 2-core machine, two
single-thread workers did 740 examples/s against 637 for one process with two threads
(1.16x; ``bench/bench_executors.py``, machine shared with other work, load average ~2), and
multi-threaded torch degrades much more than single-thread workers when cores are
oversubscribed. Results are bit-for-bit those of
:class:`~fedp13n.execution.in_process.InProcessExecutor` with the same thread count,
because every task is a pure function and runs the same kernels with the same number of
threads, whichever worker picks it up.

Design:

* Workers start with the ``spawn`` method (``forkserver`` also works): forking a process
  after torch has started its thread pools can deadlock.
* :meth:`LocalProcessExecutor.map` serializes ``fn`` with cloudpickle once per call (so
  lambdas and closures work), sends it to every worker, then hands out chunks of tasks
  as workers become free; each worker talks to the driver over its own pipe, so a dead
  worker is noticed through its process sentinel instead of hanging the driver.
* :meth:`LocalProcessExecutor.share` never pickles big data per task: a
  :class:`~fedp13n.data.client_data.ClientData` is read by the workers from its cache
  directory (memory-mapped, so all workers share the page cache), other objects are
  pickled once into a temporary file that each worker reads once and keeps until the
  driver drops the reference.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import multiprocessing.connection as mpc
import os
import pickle
import shutil
import signal
import tempfile
import threading
import traceback
import uuid
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cloudpickle

from fedp13n.data.client_data import ClientData
from fedp13n.execution.base import ClientWorkError, Executor, R, SharedRef, T

#: Chunks sent to a worker and not answered yet. One: a chunk is committed to a worker only
#: when it is free, which balances clients of very different sizes (a worker idles only for
#: one message round trip, milliseconds against the tens of milliseconds or more of a client).
_IN_FLIGHT_PER_WORKER = 1
#: Chunks are at most this many tasks, so that the last chunks leave little imbalance.
_MAX_CHUNK = 16

#: Objects resolved by shared refs in this process, by token (filled in worker processes).
_WORKER_CACHE: dict[str, Any] = {}


# ----------------------------------------------------------------------------------------
# Shared references
# ----------------------------------------------------------------------------------------
class _LocalPart:
    """Mixin: the publishing process resolves a ref to the object itself, never pickled."""

    _local: Any

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_local", None)
        return state


class ClientDataPathRef(_LocalPart, SharedRef[ClientData]):
    """A :class:`ClientData` shared by its cache directory; workers memory-map it once."""

    def __init__(self, path: str | os.PathLike, local: ClientData | None = None) -> None:
        self.path = str(Path(path).resolve())
        if local is not None:
            self._local = local

    def get(self) -> ClientData:
        local = self.__dict__.get("_local")
        if local is not None:
            return local
        key = "path:" + self.path
        cached = _WORKER_CACHE.get(key)
        if cached is None:
            cached = _WORKER_CACHE[key] = ClientData.load(self.path, mmap=True)
        return cached

    def __repr__(self) -> str:
        return f"ClientDataPathRef({self.path!r})"


class FileRef(_LocalPart, SharedRef[Any]):
    """An object pickled once into a file; each worker unpickles it once and keeps it."""

    def __init__(self, token: str, file: str, local: Any = None) -> None:
        self.token = token
        self.file = file
        self._local = local
        self._has_local = True

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._has_local = False

    def get(self) -> Any:
        if self._has_local:
            return self._local
        try:
            return _WORKER_CACHE[self.token]
        except KeyError:
            pass
        try:
            with open(self.file, "rb") as f:
                obj = pickle.load(f)
        except FileNotFoundError:
            raise RuntimeError(
                f"the shared object {self.token} is gone ({self.file} was removed): the "
                "executor that shared it was closed or the reference was dropped. Keep the "
                "executor open and the ref alive while tasks use it."
            ) from None
        _WORKER_CACHE[self.token] = obj
        return obj

    def __repr__(self) -> str:
        return f"FileRef({self.token})"


# ----------------------------------------------------------------------------------------
# Worker side
# ----------------------------------------------------------------------------------------
def _worker_main(conn: mpc.Connection, threads: int) -> None:
    """Loop of one worker process: receive functions and chunks of tasks, send results."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle.
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set: harmless
        torch.set_num_interop_threads(1)

    fns: dict[int, bytes] = {}
    loaded: tuple[int, Callable[[Any], Any]] | None = None
    while True:
        try:
            msg = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return  # the driver went away
        kind = msg[0]
        if kind == "stop":
            return
        if kind == "fn":
            _, map_id, blob = msg
            fns.clear()  # only the latest map's function is ever needed
            fns[map_id] = blob
            loaded = None
        elif kind == "forget":
            for token in msg[1]:
                _WORKER_CACHE.pop(token, None)
        elif kind == "tasks":
            _, map_id, start, blob = msg
            index = start
            try:
                if loaded is None or loaded[0] != map_id:
                    loaded = (map_id, cloudpickle.loads(fns[map_id]))
                tasks = cloudpickle.loads(blob)
                results = []
                for index, task in enumerate(tasks, start):  # noqa: B007 (index used below)
                    results.append(loaded[1](task))
                reply = cloudpickle.dumps(("ok", map_id, start, results), protocol=5)
            except BaseException as exc:  # report everything, the driver decides
                reply = _error_reply(map_id, index, exc)
            try:
                conn.send_bytes(reply)
            except OSError:
                return  # the driver went away


def _error_reply(map_id: int, index: int, exc: BaseException) -> bytes:
    tb = "".join(traceback.format_exception(exc))
    return pickle.dumps(("err", map_id, index, f"{type(exc).__name__}: {exc}", tb))


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


class _Worker:
    def __init__(self, ctx: Any, threads: int, slot: int) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_worker_main,
            args=(child, threads),
            name=f"fedp13n-worker-{slot}",
            daemon=True,
        )
        with _main_module_hidden():
            self.process.start()
        child.close()
        self.conn: mpc.Connection = parent
        #: (map_id, start, count) of the chunks sent and not answered yet, in order.
        self.in_flight: collections.deque[tuple[int, int, int]] = collections.deque()

    def send(self, msg: tuple) -> None:
        self.conn.send_bytes(pickle.dumps(msg, protocol=5))


def _shutdown(workers: list[_Worker], tmpdir: str | None) -> None:
    """Stop workers and remove shared files (also run by the finalizer at exit / GC)."""
    for w in workers:
        with contextlib.suppress(OSError, ValueError):
            w.send(("stop",))
    for w in workers:
        w.process.join(timeout=5)
        if w.process.is_alive():
            w.process.kill()
            w.process.join(timeout=5)
        w.conn.close()
    workers.clear()
    if tmpdir is not None:
        shutil.rmtree(tmpdir, ignore_errors=True)


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
    """

    def __init__(
        self,
        num_workers: int | None = None,
        threads_per_worker: int = 1,
        *,
        start_method: str = "spawn",
        chunk_size: int | None = None,
    ) -> None:
        if not isinstance(threads_per_worker, int) or threads_per_worker < 1:
            raise ValueError(
                f"threads_per_worker must be a positive integer, got {threads_per_worker!r}."
            )
        if num_workers is None:
            num_workers = max(1, usable_cores() // threads_per_worker)
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be a positive integer, got {num_workers!r}.")
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(
                f"start_method must be 'spawn' or 'forkserver', got {start_method!r} "
                "('fork' is unsafe once torch has started its thread pools)."
            )
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}.")
        self.threads_per_worker = threads_per_worker
        self.chunk_size = chunk_size
        self._ctx = multiprocessing.get_context(start_method)
        self._workers: list[_Worker] = [
            _Worker(self._ctx, threads_per_worker, i) for i in range(num_workers)
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
        pending = collections.deque(
            (start, tasks[start : start + size]) for start in range(0, len(tasks), size)
        )
        n_chunks = len(pending)
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
                start, chunk = pending.popleft()
                try:
                    blob = cloudpickle.dumps(chunk, protocol=5)
                except Exception as exc:
                    raise TypeError(
                        f"task {start} (or one of the {len(chunk)} from there) does not "
                        f"pickle: {exc}. Tasks must be picklable; share big objects with "
                        "executor.share() and pass the ref."
                    ) from exc
                w.send(("tasks", map_id, start, blob))
                w.in_flight.append((map_id, start, len(chunk)))

        for w in self._workers:
            feed(w)
        done = 0
        while done < n_chunks:
            by_conn = {w.conn: w for w in self._workers}
            by_sentinel = {w.process.sentinel: w for w in self._workers}
            ready = mpc.wait([*by_conn, *by_sentinel])
            # Replies first: a worker may have answered just before it exited.
            for obj in ready:
                w = by_conn.get(obj)
                if w is None:
                    continue
                try:
                    blob = w.conn.recv_bytes()
                except (EOFError, OSError):
                    feed(self._worker_died(w, map_id, fn_blob))
                    continue
                sent_map, start, count = w.in_flight.popleft()
                if sent_map != map_id:
                    continue  # a late answer to a map that failed earlier
                try:
                    msg = pickle.loads(blob)
                except Exception as exc:
                    raise ClientWorkError(
                        f"the results of tasks {_span(start, count)} could not be unpickled "
                        f"in the driver: {type(exc).__name__}: {exc}"
                    ) from exc
                if msg[0] == "err":
                    _, _, index, summary, tb = msg
                    raise ClientWorkError(
                        f"task {index} failed in worker process {w.process.pid}: {summary}\n\n"
                        f"Worker traceback:\n{tb}"
                    )
                results[start : start + count] = msg[3]
                done += 1
                feed(w)
            for obj in ready:
                w = by_sentinel.get(obj)
                if w is not None and w in self._workers and not w.conn.poll():
                    feed(self._worker_died(w, map_id, fn_blob))
        return results

    def share(self, obj: T) -> SharedRef[T]:
        """Publish ``obj`` to the workers without pickling it into every task.

        A :class:`ClientData` loaded from a cache directory (``.path`` set) is shared by
        that path, and a ClientData without one is first saved to a temporary cache
        directory: either way, workers memory-map the arrays. Anything else is pickled
        once into a temporary file. The data must not change while the ref is in use.
        """
        self._check_open()
        if isinstance(obj, ClientData):
            if obj.path is None:
                path = obj.save(Path(self._temp_dir()) / f"clientdata-{uuid.uuid4().hex}")
            else:
                path = obj.path
            return ClientDataPathRef(path, local=obj)  # type: ignore[return-value]
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
        return (
            f"LocalProcessExecutor(num_workers={self.num_workers}, "
            f"threads_per_worker={self.threads_per_worker})"
        )

    # -- internals --------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this LocalProcessExecutor is closed; create a new one.")

    def _temp_dir(self) -> str:
        if self._tmpdir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="fedp13n-shared-")
            # Remove the directory even if close() is never called.
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _shutdown, self._workers, self._tmpdir)
        return self._tmpdir

    def _settle_workers(self) -> None:
        """Before a map: collect (and drop) the late answers of a map that failed, and
        replace workers that died since.

        Why wait for late answers: a worker blocked sending a large result would never
        read a large message sent to it meanwhile, and both processes would wait forever.
        """
        for slot, w in enumerate(self._workers):
            alive = True
            while w.in_flight and alive:
                ready = mpc.wait([w.conn, w.process.sentinel])
                if w.conn in ready:
                    try:
                        w.conn.recv_bytes()
                        w.in_flight.popleft()
                        continue
                    except (EOFError, OSError):
                        alive = False
                alive = alive and w.conn.poll()
            if not alive or not w.process.is_alive():
                w.conn.close()
                w.process.join(timeout=5)
                self._workers[slot] = _Worker(self._ctx, self.threads_per_worker, slot)

    def _worker_died(self, w: _Worker, map_id: int, fn_blob: bytes) -> _Worker:
        """Replace a dead worker; raise an error naming the tasks of this map it was running.

        Returns the replacement (already holding this map's function) when the dead
        worker had none of this map's tasks.
        """
        w.process.join(timeout=5)
        code = w.process.exitcode
        lost = [(s, c) for m, s, c in w.in_flight if m == map_id]
        slot = self._workers.index(w)
        w.conn.close()
        new = self._workers[slot] = _Worker(self._ctx, self.threads_per_worker, slot)
        if not lost:
            new.send(("fn", map_id, fn_blob))
            return new
        if code is not None and code < 0:
            try:
                how = f"was killed by signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
            if code == -signal.SIGKILL:
                how += " (often the operating system's out-of-memory killer)"
        else:
            how = f"exited with code {code}"
        which = ", ".join(_span(s, c) for s, c in lost)
        raise ClientWorkError(
            f"worker process {w.process.pid} {how} before returning tasks {which}. "
            "A replacement worker was started; if memory ran out, use fewer workers "
            "(num_workers) or smaller batches."
        )


def _span(start: int, count: int) -> str:
    return str(start) if count == 1 else f"{start}-{start + count - 1}"


def _release(file: str, token: str, forget: list[str], lock: threading.Lock) -> None:
    """A FileRef was dropped: delete its file and queue a message telling workers to drop it."""
    with contextlib.suppress(OSError):
        os.unlink(file)
    with lock:
        forget.append(token)


def default_chunk_size(num_tasks: int, num_workers: int) -> int:
    """About 8 chunks per worker, at most ``_MAX_CHUNK`` tasks each: few messages for many
    small tasks, fine-grained hand-out (good balance) for the few heavy tasks of a round."""
    return max(1, min(_MAX_CHUNK, -(-num_tasks // (8 * num_workers))))


def usable_cores() -> int:
    """Cores this process may run on (respects CPU affinity / container limits)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
