"""Run client work in this process, one task after another: for debugging (exact
tracebacks, breakpoints) and as the reference the other executors must match."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fedp13n.execution.base import Executor, R, T
from fedp13n.execution.threads import torch_threads


class InProcessExecutor(Executor):
    """Sequential executor. ``threads_per_worker`` torch threads are used while a task runs."""

    def __init__(self, threads_per_worker: int = 1) -> None:
        if threads_per_worker < 1:
            raise ValueError(f"threads_per_worker must be >= 1, got {threads_per_worker}.")
        self.threads_per_worker = threads_per_worker

    @property
    def num_workers(self) -> int:
        return 1

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        with torch_threads(self.threads_per_worker):
            return [fn(task) for task in tasks]

    def __repr__(self) -> str:
        return f"InProcessExecutor(threads_per_worker={self.threads_per_worker})"
