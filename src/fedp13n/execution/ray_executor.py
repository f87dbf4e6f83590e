"""Run client work on a Ray cluster (``pip install 'fedp13n[ray]'``).

For users who outgrow one machine: the same pure client functions become Ray tasks that
each claim ``threads_per_worker`` CPUs and run torch with that many threads, so results
are bit-for-bit those of the other executors for the same seed.

:meth:`RayExecutor.share` puts an object into the Ray object store once (numpy arrays are
read zero-copy by every worker of a node); each worker process deserializes it once. With
``share_paths=True`` a ``ClientData`` loaded from a cache directory every node can read (a
shared file system) is shared by its path instead: workers memory-map it.

A real cluster: ``ray start --head`` on one node, ``ray start --address=<head>:6379`` on
the others, fedp13n (and the same torch) on every node or in ``runtime_env``; then
``address="auto"`` on a node of the cluster or ``address="ray://<head>:10001"`` from outside.

GPUs: with ``gpus_per_task`` each task claims that share of a GPU (``0.25``: four tasks
per GPU). Ray picks the GPU and sets ``CUDA_VISIBLE_DEVICES``, which pins the task's
process to it (:func:`~fedp13n.utils.device.pin_process_to_gpu`). Ray runs each GPU task
in a fresh worker process (so that a process never keeps a GPU it no longer holds): each
chunk pays a process and CUDA start, so prefer few, large chunks (``chunk_size``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from fedp13n.execution import sharing
from fedp13n.execution.base import ClientWorkError, Executor, R, SharedRef, T
from fedp13n.execution.chunks import (
    check_chunk_size,
    chunks,
    default_chunk_size,
    failure,
    results_or_raise,
    run_chunk,
    span,
)
from fedp13n.utils.checks import check_positive_int
from fedp13n.utils.lru import LRUCache

log = logging.getLogger(__name__)

#: Deserialized shared objects and functions kept per Ray worker process (LRU).
_WORKER_CACHE = LRUCache(8)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(
            "the Ray executor needs the optional dependency ray: pip install 'fedp13n[ray]' "
            "(or choose executor 'processes' / 'in-process')."
        ) from None
    return ray


def _cached_get(object_ref: Any) -> Any:
    """``ray.get`` once per worker process and object; the most recent objects are kept."""
    return _WORKER_CACHE.get(object_ref.hex(), lambda: _import_ray().get(object_ref))


class RayRef(sharing.LocalFirstRef):
    """An object in the Ray object store; resolved once per worker process."""

    def __init__(self, object_ref: Any, local: Any = None) -> None:
        self.object_ref = object_ref
        self._keep(local)

    def _resolve(self) -> Any:
        return _cached_get(self.object_ref)

    def __repr__(self) -> str:
        return f"RayRef({self.object_ref.hex()})"


def _run_chunk(fn_holder: list[Any], start: int, tasks: list[Any], threads: int) -> tuple:
    """The Ray task: run ``fn`` on a chunk of tasks with ``threads`` torch threads.

    A task that claimed GPUs (``gpus_per_task``) pins its process to the GPU Ray chose
    for it (Ray has set ``CUDA_VISIBLE_DEVICES``), before anything starts CUDA.

    ``fn_holder`` wraps the function's object ref in a list so Ray passes the ref itself
    and the worker can cache the deserialized function across chunks. (``fn`` is put
    with Ray's own serializer, not pre-pickled with cloudpickle: object refs captured by
    ``fn``, e.g. shared refs in a closure, would otherwise lose their owner and hang.)
    """
    if _import_ray().get_gpu_ids():
        from fedp13n.utils.device import pin_process_to_gpu

        pin_process_to_gpu(None)  # keeps Ray's CUDA_VISIBLE_DEVICES
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:
        fn = _cached_get(fn_holder[0])
    except Exception as exc:
        return failure(start, exc)
    return run_chunk(fn, start, tasks)


class RayExecutor(Executor):
    """Client work as Ray tasks, each with ``threads_per_worker`` CPUs and torch threads.

    Args:
        address: ``None`` starts a local Ray instance (or uses the one this process already
            initialized); ``"auto"`` joins the cluster this machine belongs to;
            ``"ray://<head>:10001"`` connects through Ray Client.
        num_workers: tasks in flight at once, used to size chunks; default: the cluster's
            CPUs divided by ``threads_per_worker``. When this executor starts a local
            instance it also limits that instance to ``num_workers * threads_per_worker`` CPUs.
        threads_per_worker: CPUs each task claims and torch threads it uses.
        runtime_env: Ray runtime environment (e.g. ``{"pip": ["fedp13n"]}``) for nodes that
            lack fedp13n.
        init_kwargs: more keyword arguments for ``ray.init``.
        share_paths: share an object of the share-by-path protocol
            (:mod:`fedp13n.execution.sharing`) that already has a path, e.g. a
            :class:`ClientData` with a cache ``path``, by that path (workers memory-map it)
            instead of through the object store; only when every node can read the path.
        max_retries: times Ray re-runs a chunk whose worker died (safe: tasks are pure);
            the same option and default as :class:`LocalProcessExecutor`.
        chunk_size: tasks per Ray task; default ``chunks.default_chunk_size``.
        gpus_per_task: share of a GPU each task claims (Ray's ``num_gpus``): 0 (default) no
            GPU; ``0.25``: four tasks share a GPU; a value above 1 must be a whole number.
            Ray picks the GPU of each task and client work asking for a CUDA device runs
            on it. With GPUs, ``num_workers`` defaults to at most the cluster's GPUs
            divided by ``gpus_per_task``. A local instance this executor starts detects
            the machine's GPUs (``init_kwargs={"num_gpus": N}`` overrides it).
    """

    def __init__(
        self,
        address: str | None = None,
        num_workers: int | None = None,
        threads_per_worker: int = 1,
        runtime_env: dict[str, Any] | None = None,
        init_kwargs: dict[str, Any] | None = None,
        *,
        share_paths: bool = False,
        max_retries: int = 3,
        chunk_size: int | None = None,
        gpus_per_task: float = 0.0,
    ) -> None:
        _check_gpus_per_task(gpus_per_task)
        threads_per_worker = check_positive_int("threads_per_worker", threads_per_worker)
        if num_workers is not None:
            num_workers = check_positive_int("num_workers", num_workers)
        self.chunk_size = check_chunk_size(chunk_size)
        self._ray = ray = _import_ray()
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            _init_ray(ray, address, runtime_env, init_kwargs, num_workers, threads_per_worker)
        resources = ray.cluster_resources()
        if gpus_per_task > resources.get("GPU", 0):
            message = (
                f"gpus_per_task={gpus_per_task:g} but the Ray cluster has "
                f"{resources.get('GPU', 0):g} GPUs, so no task could ever start; run where "
                "there are GPUs, give a local instance logical ones with "
                "init_kwargs={'num_gpus': N}, or use gpus_per_task=0."
            )
            if self._owns_ray and address is None:  # a local instance never gets GPUs later
                ray.shutdown()
                raise ValueError(message)
            log.warning(message)  # a cluster may add GPU nodes
        if num_workers is None:
            num_workers = max(1, int(resources.get("CPU", 1)) // threads_per_worker)
            if gpus_per_task > 0:
                # + 1e-4: float rounding (0.3 / 0.1 is 2.999...) must not lose a worker
                fit = int(resources.get("GPU", 0) / gpus_per_task + 1e-4)
                num_workers = max(1, min(num_workers, fit))
        self._num_workers = num_workers
        self.threads_per_worker = threads_per_worker
        self.gpus_per_task = float(gpus_per_task)
        self.share_paths = share_paths
        self._remote = ray.remote(
            num_cpus=threads_per_worker, num_gpus=self.gpus_per_task, max_retries=max_retries
        )(_run_chunk)

    @property
    def num_workers(self) -> int:
        return self._num_workers

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        self._check_open()
        tasks = list(tasks)
        if not tasks:
            return []
        ray = self._ray
        try:
            fn_ref = ray.put(fn)  # Ray's serializer: object refs inside fn stay valid
        except Exception as exc:
            raise TypeError(
                f"cannot send {fn!r} to Ray workers: it does not pickle ({exc})."
            ) from exc
        size = self.chunk_size or default_chunk_size(len(tasks), self.num_workers)
        spans = chunks(len(tasks), size)
        refs = [
            self._remote.remote([fn_ref], s, tasks[s : s + c], self.threads_per_worker)
            for s, c in spans
        ]
        results: list[Any] = []
        for i, ((start, count), ref) in enumerate(zip(spans, refs, strict=True)):
            try:
                reply = ray.get(ref)
                results.extend(results_or_raise(reply, "in a Ray worker"))
            except ray.exceptions.RayError as exc:
                self._cancel(refs[i + 1 :])
                raise ClientWorkError(
                    f"Ray could not run tasks {span(start, count)}: {type(exc).__name__}: {exc}"
                ) from exc
            except ClientWorkError:
                self._cancel(refs[i + 1 :])
                raise
        return results

    def share(self, obj: T) -> SharedRef[T]:
        """Put ``obj`` in the object store once (with ``share_paths``, an object of the
        share-by-path protocol that has a path, e.g. a cached ClientData, is shared by it)."""
        self._check_open()
        if self.share_paths and sharing.shares_by_path(obj):
            path = obj.to_shared_path(None)  # type: ignore[attr-defined]
            if path is not None:
                return sharing.PathRef(type(obj), path, local=obj)
        return RayRef(self._ray.put(obj), local=obj)

    def close(self) -> None:
        """Shut Ray down only if this executor started it; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()

    def _cancel(self, refs: list[Any]) -> None:
        for ref in refs:
            with contextlib.suppress(Exception):  # finished or not cancellable: fine
                self._ray.cancel(ref)

    def __repr__(self) -> str:
        gpus = f", gpus_per_task={self.gpus_per_task:g}" if self.gpus_per_task > 0 else ""
        return (
            f"RayExecutor(num_workers={self.num_workers}, "
            f"threads_per_worker={self.threads_per_worker}{gpus})"
        )


def _init_ray(
    ray: Any,
    address: str | None,
    runtime_env: dict[str, Any] | None,
    init_kwargs: dict[str, Any] | None,
    num_workers: int | None,
    threads_per_worker: int,
) -> None:
    """``ray.init`` for :class:`RayExecutor` (a local instance limited to its workers' CPUs),
    or a one-line ConnectionError saying how to start a cluster."""
    kwargs = dict(init_kwargs or {})
    if runtime_env is not None:
        kwargs["runtime_env"] = runtime_env
    if address is None:
        kwargs.setdefault("include_dashboard", False)
        if num_workers is not None:
            kwargs.setdefault("num_cpus", num_workers * threads_per_worker)
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise ConnectionError(
            f"could not connect to a Ray cluster at {address!r}: {exc}. Start one "
            "with 'ray start --head' (address='auto' on its nodes, "
            "'ray://<head>:10001' from elsewhere) or pass address=None for a "
            "local instance."
        ) from exc


def _check_gpus_per_task(gpus_per_task: Any) -> None:
    """A one-line ValueError naming the fix unless ``gpus_per_task`` is a valid GPU share."""
    ok = isinstance(gpus_per_task, (int, float)) and not isinstance(gpus_per_task, bool)
    ok = ok and gpus_per_task >= 0  # also refuses NaN
    ok = ok and (gpus_per_task <= 1 or float(gpus_per_task).is_integer())
    if not ok:
        raise ValueError(
            f"gpus_per_task must be 0 (no GPU), a share of one GPU in (0, 1] (0.25: four "
            f"tasks per GPU) or a whole number of GPUs (Ray's rule), got {gpus_per_task!r}."
        )
