"""The one interface through which all client work runs.

Algorithms (FedAvg rounds, personalization evaluation) describe client work as a pure
function applied to a list of picklable tasks and hand it to an :class:`Executor`; they
never know whether it runs in this process, in local worker processes or on a Ray
cluster. Large read-only inputs (a federated dataset, the round's global weights) are
published once with :meth:`Executor.share`, which returns a small :class:`SharedRef` that
tasks carry instead of the data itself: each backend resolves it the cheapest way it
can (the object itself, a memory-mapped file, the Ray object store).

Determinism contract: results come back in task order, and every backend runs client
work with the same number of compute threads (``threads_per_worker``, 1 by default),
so the numbers are bit-for-bit the same whatever the backend and the number of workers.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

#: The executors :func:`fedp13n.execution.factory.make_executor` builds, by name.
EXECUTOR_KINDS = ("auto", "in-process", "processes", "ray")

T = TypeVar("T")
R = TypeVar("R")


class SharedRef(abc.ABC, Generic[T]):
    """A cheap-to-pickle handle to a read-only object published by an executor."""

    @abc.abstractmethod
    def get(self) -> T:
        """The object, resolved in whatever process runs the task."""


class LocalRef(SharedRef[T]):
    """Holds the object itself: for work that runs in the publishing process."""

    def __init__(self, obj: T) -> None:
        self._obj = obj

    def get(self) -> T:
        return self._obj


class Executor(abc.ABC):
    """Runs ``fn(task)`` for every task and returns the results in task order."""

    #: Compute threads each unit of client work uses (torch intra-op threads).
    threads_per_worker: int = 1
    _closed = False

    @property
    @abc.abstractmethod
    def num_workers(self) -> int:
        """How many tasks can run at the same time."""

    @abc.abstractmethod
    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        """Apply ``fn`` to every task; results in the order of ``tasks``.

        ``fn`` and the tasks must be picklable (cloudpickle: lambdas and closures are fine)
        for backends that run in other processes. An exception in a task is raised here as
        :class:`ClientWorkError`, naming the task's position. Backends with worker processes
        replace a worker that dies and run its tasks again, up to their ``max_retries``
        (safe: tasks are pure, so the results are those of an uninterrupted run).
        """

    def share(self, obj: T) -> SharedRef[T]:
        """Publish a read-only object once for many tasks; see the module docstring."""
        return LocalRef(obj)

    def close(self) -> None:
        """Release workers. The executor cannot be used afterwards."""

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"this {type(self).__name__} is closed; create a new one.")

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ClientWorkError(RuntimeError):
    """A task failed; the message names the task and carries the worker's traceback."""


class ClientTaskTimeout(ClientWorkError, TimeoutError):
    """A task ran longer than the executor's ``task_timeout`` (or its worker hung or was
    stopped); the message names the task."""
