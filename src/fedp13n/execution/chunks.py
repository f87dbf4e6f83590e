"""The chunk / failure protocol every multi-process backend shares.

A ``map`` is cut into chunks of consecutive tasks (:func:`chunks`, sized by
:func:`default_chunk_size`); whatever runs a chunk runs it with :func:`run_chunk`, which
never raises but returns a reply: the results, or the position of the task that failed
with its error and traceback. The driver turns a reply back into results or into a
:class:`~fedp13n.execution.base.ClientWorkError` naming the task (:func:`results_or_raise`),
and words the loss of a worker the same way for every backend (:func:`lost_error`).
Used by :mod:`~fedp13n.execution.process_pool` and :mod:`~fedp13n.execution.ray_executor`.
"""

from __future__ import annotations

import signal
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from fedp13n.execution.base import ClientWorkError

#: Chunks are at most this many tasks, so that the last chunks leave little imbalance.
MAX_CHUNK = 16

#: A reply: ``("ok", results)`` or ``("err", index, "Type: message", traceback_text)``.
Reply = tuple


def default_chunk_size(num_tasks: int, num_workers: int) -> int:
    """About 8 chunks per worker, at most :data:`MAX_CHUNK` tasks each: few messages for
    many small tasks, fine-grained hand-out (good balance) for the few heavy tasks of a round."""
    return max(1, min(MAX_CHUNK, -(-num_tasks // (8 * num_workers))))


def check_chunk_size(chunk_size: Any) -> int | None:
    """``chunk_size`` (tasks per message; None: :func:`default_chunk_size`), checked."""
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}.")
    return chunk_size


def chunks(num_tasks: int, size: int) -> list[tuple[int, int]]:
    """``(start, count)`` of each chunk, in task order."""
    return [(s, min(size, num_tasks - s)) for s in range(0, num_tasks, size)]


def span(start: int, count: int) -> str:
    """``"7"`` or ``"4-7"``: the task positions of a chunk, for messages."""
    return str(start) if count == 1 else f"{start}-{start + count - 1}"


def run_chunk(
    fn: Callable[[Any], Any],
    start: int,
    tasks: Sequence[Any],
    before: Callable[[int], None] | None = None,
) -> Reply:
    """Run ``fn`` on every task of a chunk (the first at position ``start``); never raises.

    ``before(index)`` is called before each task (liveness: which task runs since when).
    """
    index = start
    try:
        results = []
        for index, task in enumerate(tasks, start):  # noqa: B007 (index is reported on error)
            if before is not None:
                before(index)
            results.append(fn(task))
        return ("ok", results)
    except (Exception, SystemExit) as exc:
        return failure(index, exc)


def failure(index: int, exc: BaseException) -> Reply:
    """The reply for task ``index`` raising ``exc``."""
    return ("err", index, f"{type(exc).__name__}: {exc}", "".join(traceback.format_exception(exc)))


def results_or_raise(reply: Reply, where: str) -> list[Any]:
    """The chunk's results, or a :class:`ClientWorkError` naming the task that failed
    ``where`` (e.g. ``"in worker process 123"``) with the worker's traceback."""
    if reply[0] == "ok":
        return reply[1]
    _, index, summary, tb = reply
    raise ClientWorkError(f"task {index} failed {where}: {summary}\n\nWorker traceback:\n{tb}")


def exit_description(exitcode: int | None) -> str:
    """How a process ended, in words (``"was killed by signal SIGKILL (...)"``)."""
    if exitcode is not None and exitcode < 0:
        try:
            how = f"was killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
        if exitcode == -signal.SIGKILL:
            how += " (often the operating system's out-of-memory killer)"
        return how
    return f"exited with code {exitcode}"


def lost_error(spans: Sequence[tuple[int, int]], what: str, attempts: int) -> ClientWorkError:
    """The error for tasks lost ``attempts`` times (``what``: how the last worker ended)."""
    which = ", ".join(span(s, c) for s, c in spans)
    tries = f" (tried {attempts} times)" if attempts > 1 else ""
    return ClientWorkError(
        f"{what} before returning tasks {which}{tries}. If memory ran out, use fewer "
        "workers (num_workers) or smaller batches."
    )
