"""Run client work in this process, one task after another: for debugging (exact
tracebacks, breakpoints) and as the reference the other executors must match."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch

from fedp13n.execution.base import Executor, R, T
from fedp13n.utils.checks import check_positive_int


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Pin torch's compute thread count while client work runs (numbers depend on it)."""
    previous = torch.get_num_threads()
    if previous != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


class InProcessExecutor(Executor):
    """Sequential executor. ``threads_per_worker`` torch threads are used while a task runs."""

    def __init__(self, threads_per_worker: int = 1) -> None:
        self.threads_per_worker = check_positive_int("threads_per_worker", threads_per_worker)

    @property
    def num_workers(self) -> int:
        return 1

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        with torch_threads(self.threads_per_worker):
            return [fn(task) for task in tasks]

    def __repr__(self) -> str:
        return f"InProcessExecutor(threads_per_worker={self.threads_per_worker})"
