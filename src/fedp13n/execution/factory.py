"""Pick an executor by name: what the CLI and experiment configs call ``executor``."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from fedp13n.execution.base import EXECUTOR_KINDS, Executor
from fedp13n.execution.in_process import InProcessExecutor
from fedp13n.execution.process_pool import LocalProcessExecutor, _check_gpus, usable_cores
from fedp13n.utils.checks import check_positive_int

#: The most local worker processes one machine is given (each a Python process with torch).
MAX_LOCAL_WORKERS = 1024


def make_executor(
    kind: str = "auto",
    num_workers: int | None = None,
    threads_per_worker: int = 1,
    ray_address: str | None = None,
    *,
    task_timeout: float | None = None,
    max_retries: int = 3,
    gpus: Sequence[int] | None = None,
    workers_per_gpu: int = 1,
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

    GPUs: with ``gpus`` (GPU indices, e.g. ``[0]`` or ``[0, 1]``) client work asking for a
    CUDA device runs on those GPUs, ``workers_per_gpu`` worker processes sharing each GPU:
        ``"auto"`` and ``"processes"``: :class:`LocalProcessExecutor` with its workers
        pinned to ``gpus`` round robin; ``num_workers`` defaults to
        ``len(gpus) * workers_per_gpu`` (an explicit ``num_workers`` wins). ``"auto"`` uses
        worker processes even for one worker, since only a process can be pinned.
        ``"ray"``: each Ray task claims ``1 / workers_per_gpu`` of a GPU; Ray picks the GPUs
        itself, so ``gpus`` only says "use GPUs" (which and how many are the cluster's).
        ``"in-process"``: ``gpus`` is ignored; the work runs in this process on the device
        it asks for.
    ``workers_per_gpu`` is ignored without ``gpus``.
    """
    num_workers, threads_per_worker, gpus = _check(
        kind, num_workers, threads_per_worker, ray_address, task_timeout, gpus, workers_per_gpu
    )
    if gpus and kind in ("auto", "processes") and num_workers is None:
        num_workers = len(gpus) * workers_per_gpu
    if kind == "auto":
        workers = num_workers or max(1, usable_cores() // threads_per_worker)
        # a timeout or a GPU pin needs a worker process, even for one worker
        needs_process = task_timeout is not None or bool(gpus)
        kind = "processes" if workers > 1 or needs_process else "in-process"
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
            num_workers,
            threads_per_worker,
            task_timeout=task_timeout,
            max_retries=max_retries,
            gpus=gpus,
        )
    from fedp13n.execution.ray_executor import RayExecutor

    gpus_per_task = 1 / workers_per_gpu if gpus else 0.0
    return RayExecutor(
        ray_address,
        num_workers,
        threads_per_worker,
        max_retries=max_retries,
        gpus_per_task=gpus_per_task,
    )


def _check(
    kind: str,
    num_workers: int | None,
    threads_per_worker: int,
    ray_address: str | None,
    task_timeout: float | None,
    gpus: Sequence[int] | None,
    workers_per_gpu: int,
) -> tuple[int | None, int, list[int] | None]:
    """The arguments of :func:`make_executor` checked: a one-line ValueError naming the fix
    for a bad value or combination; ``(num_workers, threads_per_worker, gpus)`` normalised."""
    if kind not in EXECUTOR_KINDS:
        raise ValueError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTOR_KINDS)}.")
    threads_per_worker = check_positive_int("threads_per_worker", threads_per_worker)
    if num_workers is not None:
        num_workers = check_positive_int("num_workers", num_workers)
        if kind in ("auto", "processes") and num_workers > MAX_LOCAL_WORKERS:
            raise ValueError(
                f"num_workers={num_workers} local worker processes is more than "
                f"{MAX_LOCAL_WORKERS}; give about one per core (or use executor 'ray')."
            )
    check_positive_int("workers_per_gpu", workers_per_gpu)
    if task_timeout is not None and (
        isinstance(task_timeout, bool) or not isinstance(task_timeout, numbers.Real)
    ):
        raise ValueError(f"task_timeout must be positive seconds or None, got {task_timeout!r}.")
    if gpus is not None:
        gpus = list(_check_gpus(gpus))
        if kind in ("auto", "processes"):
            _check_machine_has(gpus)
            if num_workers is not None and num_workers < len(gpus):
                raise ValueError(
                    f"num_workers={num_workers} is fewer than the {len(gpus)} GPUs {gpus}: some "
                    f"would stay idle; give at least {len(gpus)} workers or fewer GPUs."
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
    return num_workers, threads_per_worker, gpus


def _check_machine_has(gpus: list[int]) -> None:
    """A one-line ``ValueError`` unless this machine has every GPU in ``gpus`` (a worker
    pinned to a GPU that is not there would fail at its first CUDA operation)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ValueError(
            f"gpus={gpus} but this machine has no CUDA GPU; drop gpus to run on the CPU."
        )
    missing = [g for g in gpus if g >= count]
    if missing:
        raise ValueError(
            f"gpus={gpus} but this machine has {count} GPU(s), numbered 0..{count - 1}; GPU "
            f"{missing[0]} does not exist."
        )
