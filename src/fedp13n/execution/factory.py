"""Pick an executor by name: what the CLI and experiment configs call ``executor``."""

from __future__ import annotations

from fedp13n.execution.base import EXECUTOR_KINDS, Executor
from fedp13n.execution.in_process import InProcessExecutor
from fedp13n.execution.process_pool import LocalProcessExecutor, usable_cores


def make_executor(
    kind: str = "auto",
    num_workers: int | None = None,
    threads_per_worker: int = 1,
    ray_address: str | None = None,
    *,
    task_timeout: float | None = None,
    max_retries: int = 3,
) -> Executor:
    """Build an executor.

    Kinds:
        ``"auto"``: local worker processes, one per usable core (divided by
        ``threads_per_worker``), when there is more than one core; in-process otherwise.
        Why processes by default: single-thread workers train the small EMNIST CNN faster
        than one process with as many torch threads (measured by
        ``bench/bench_executors.py``; figures in ``bench/README.md``), and every task keeps
        one thread, so the numbers match ``"in-process"`` bit for bit.
        ``"in-process"``: sequential, in this process (debugging; exact tracebacks).
        ``"processes"``: :class:`LocalProcessExecutor` with ``num_workers`` workers.
        ``"ray"``: :class:`~fedp13n.execution.ray_executor.RayExecutor` at ``ray_address``
        (``None``: a local Ray instance; ``"auto"`` or ``"ray://<head>:10001"``: a cluster).

    ``task_timeout`` (seconds per task, ``"processes"`` only) and ``max_retries`` (re-runs
    of the tasks of a worker that died; ``"processes"`` and ``"ray"``) are described in
    :class:`LocalProcessExecutor`. Every kind gives the same numbers for the same seed and
    ``threads_per_worker``. Invalid combinations raise a one-line ``ValueError`` naming the fix.
    """
    if kind not in EXECUTOR_KINDS:
        raise ValueError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTOR_KINDS)}.")
    if not isinstance(threads_per_worker, int) or threads_per_worker < 1:
        raise ValueError(
            f"threads_per_worker must be a positive integer, got {threads_per_worker!r}."
        )
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 1):
        raise ValueError(
            f"num_workers must be a positive integer (or None for automatic), got {num_workers!r}."
        )
    if ray_address is not None and kind != "ray":
        raise ValueError(
            f"ray_address={ray_address!r} only applies to executor 'ray', not {kind!r}."
        )
    if task_timeout is not None and kind not in ("auto", "processes"):
        raise ValueError(
            f"task_timeout applies to executor 'processes' only, not {kind!r}; choose "
            "executor 'processes' or drop task_timeout."
        )
    if kind == "auto":
        workers = num_workers or max(1, usable_cores() // threads_per_worker)
        # a timeout needs a worker process to stop, even on one core
        kind = "processes" if workers > 1 or task_timeout is not None else "in-process"
        num_workers = workers
    if kind == "in-process":
        if num_workers not in (None, 1):
            raise ValueError(
                f"executor 'in-process' runs one task at a time, so num_workers (--workers) "
                f"must be 1, got {num_workers}; use executor 'processes' for more workers."
            )
        return InProcessExecutor(threads_per_worker=threads_per_worker)
    if kind == "processes":
        return LocalProcessExecutor(
            num_workers, threads_per_worker, task_timeout=task_timeout, max_retries=max_retries
        )
    from fedp13n.execution.ray_executor import RayExecutor

    return RayExecutor(ray_address, num_workers, threads_per_worker, max_retries=max_retries)
