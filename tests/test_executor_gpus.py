"""Executors pin their workers to GPUs.

No GPU is needed: pinning a process only sets ``CUDA_VISIBLE_DEVICES`` and a module flag
(:func:`fedp13n.utils.device.pin_process_to_gpu`), and Ray hands out logical GPUs.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import sys
import time
import types

import cloudpickle
import pytest

from fedp13n.execution import InProcessExecutor, LocalProcessExecutor, make_executor, process_pool
from fedp13n.utils.device import gpu_assignment

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests


def _where(_: int) -> tuple[int, str | None, str, str | None]:
    """Where a task ran: (pid, CUDA_VISIBLE_DEVICES, pinned device, work_device("cuda:1"))."""
    from fedp13n.utils import device

    # work_device's first CUDA call sets deterministic kernels; torch's switch imports
    # torch._inductor (2+ s of CPU per worker): skipped here, where only placement counts.
    device.set_deterministic = lambda enabled=True: None
    time.sleep(0.01)
    pinned = device.pinned_device()
    work = str(device.work_device("cuda:1")) if pinned is not None else None  # no CUDA here
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES"), str(pinned), work


def _gpu_by_pid(ex: LocalProcessExecutor, n_tasks: int = 12) -> dict[int, str | None]:
    """Map ``_where`` until every worker answered; check each pid keeps one GPU."""
    gpu_by_pid: dict[int, str | None] = {}
    for pid, visible, pinned, work in ex.map(_where, range(n_tasks)):
        assert gpu_by_pid.setdefault(pid, visible) == visible  # a worker never moves
        assert (pinned, work) == ("cuda:0", "cuda:0")  # the pinned GPU wins over "cuda:1"
    assert set(gpu_by_pid) == {w.process.pid for w in ex._workers}  # every worker answered
    return gpu_by_pid


def test_gpu_assignment_is_round_robin_over_the_gpus():
    assert gpu_assignment(4, [0, 1]) == [0, 1, 0, 1]
    assert gpu_assignment(3, [3]) == [3, 3, 3]
    assert gpu_assignment(1, [2, 5]) == [2]
    with pytest.raises(ValueError, match="at least one GPU"):
        gpu_assignment(2, [])


def test_process_workers_are_pinned_round_robin_and_a_replacement_keeps_its_gpu():
    with LocalProcessExecutor(3, gpus=[0, 1], chunk_size=2) as ex:
        assert repr(ex) == "LocalProcessExecutor(num_workers=3, threads_per_worker=1, gpus=[0, 1])"
        gpu_by_pid = _gpu_by_pid(ex)
        assert collections.Counter(gpu_by_pid.values()) == {"0": 2, "1": 1}
        assert [gpu_by_pid[w.process.pid] for w in ex._workers] == ["0", "1", "0"]

        victim = ex._workers[1]  # the only worker on GPU 1
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.join(timeout=10)
        assert not victim.process.is_alive()
        gpu_by_pid = _gpu_by_pid(ex)
        assert victim.process.pid not in gpu_by_pid
        assert ex._workers[1] is not victim
        assert [gpu_by_pid[w.process.pid] for w in ex._workers] == ["0", "1", "0"]


def test_unpinned_workers_keep_the_parents_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "parent-marker")
    with LocalProcessExecutor(1) as ex:
        assert "gpus" not in repr(ex)
        [(_, visible, pinned, work)] = ex.map(_where, [0])
    assert (visible, pinned, work) == ("parent-marker", "None", None)


class _FakeWorker:
    """Stands in for a worker process (spawning real ones costs seconds): records its GPU."""

    def __init__(self, ctx, threads: int, slot: int, gpu: int | None = None) -> None:
        self.gpu, self.in_flight = gpu, collections.deque()
        self.process = types.SimpleNamespace(join=lambda timeout: None, is_alive=lambda: False)
        self.conn = types.SimpleNamespace(close=lambda: None)

    def send(self, msg: tuple) -> None:
        pass


def _four_gpus(monkeypatch):
    """This machine, as make_executor sees it, has 4 GPUs."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


def test_make_executor_pins_process_workers_to_the_gpus(monkeypatch):
    monkeypatch.setattr(process_pool, "_Worker", _FakeWorker)
    _four_gpus(monkeypatch)
    cases = [
        (dict(kind="auto", gpus=[0], workers_per_gpu=3), [0, 0, 0]),
        (dict(kind="auto", gpus=[1]), [1]),  # one worker: still a process, to pin it
        (dict(kind="auto", gpus=[0, 1], workers_per_gpu=2), [0, 1, 0, 1]),
        (dict(kind="processes", gpus=(2, 3)), [2, 3]),
        (dict(kind="processes", num_workers=2, gpus=[0, 1], workers_per_gpu=4), [0, 1]),
        (dict(kind="processes", num_workers=3, gpus=[0, 1]), [0, 1, 0]),  # num_workers wins
    ]
    for kwargs, gpus in cases:
        with make_executor(**kwargs) as ex:
            assert isinstance(ex, LocalProcessExecutor) and ex.num_workers == len(gpus)
            assert [w.gpu for w in ex._workers] == gpus, kwargs
    assert isinstance(make_executor("in-process", gpus=[0]), InProcessExecutor)  # ignored
    with LocalProcessExecutor(gpus=[0, 1]) as ex:  # one worker per GPU by default
        assert [w.gpu for w in ex._workers] == [0, 1]


def test_gpus_the_machine_lacks_are_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"gpus=\[0\] but this machine has no CUDA GPU"):
        make_executor("processes", gpus=[0])
    _four_gpus(monkeypatch)
    with pytest.raises(ValueError, match="has 4 GPU.*GPU 7 does not exist"):
        make_executor("auto", gpus=[1, 7])
    with pytest.raises(ValueError, match="num_workers=1 is fewer than the 2 GPUs"):
        make_executor("processes", num_workers=1, gpus=[0, 1])


def test_bad_gpu_settings_are_one_line_errors_naming_the_fix(monkeypatch):
    _four_gpus(monkeypatch)
    cases = [
        (dict(gpus=[]), "gpus must be a non-empty list of GPU indices"),
        (dict(gpus=[-1]), "integers >= 0"),
        (dict(gpus=[True]), "integers >= 0"),
        (dict(gpus="0"), "e.g. gpus=[0]"),
        (dict(gpus=[0], workers_per_gpu=0), "workers_per_gpu must be a positive integer"),
        (dict(gpus=[0], workers_per_gpu=True), "workers_per_gpu must be a positive integer"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError) as info:
            make_executor("processes", **kwargs)
        assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="non-empty list of GPU indices"):
        LocalProcessExecutor(1, gpus=[0.5])


# -- Ray ----------------------------------------------------------------------------------------
def _ray_where(_: int) -> tuple[list[str], str | None, str]:
    import ray

    from fedp13n.utils.device import pinned_device

    ids = [str(i) for i in ray.get_gpu_ids()]
    return ids, os.environ.get("CUDA_VISIBLE_DEVICES"), str(pinned_device())


@pytest.fixture(scope="module")
def ray_two_gpus():
    """A local Ray instance with 2 CPUs and 2 logical GPUs (no hardware needed)."""
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's own cloudpickle
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, address="local", log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.ray
def test_ray_tasks_claim_a_share_of_a_gpu_and_are_pinned_to_it(ray_two_gpus, caplog):
    from fedp13n.execution.ray_executor import RayExecutor

    # Without GPUs first: pinning is per process, and Ray reuses worker processes (though
    # not those of tasks that claimed GPUs: by default Ray ends them after one task).
    with RayExecutor(num_workers=2, chunk_size=2) as ex:  # one Ray task: one process
        assert "gpus_per_task" not in repr(ex)
        assert [(ids, pinned) for ids, _, pinned in ex.map(_ray_where, range(2))] == [
            ([], "None")
        ] * 2

    with RayExecutor(num_workers=2, gpus_per_task=0.5, chunk_size=2) as ex:
        assert repr(ex) == "RayExecutor(num_workers=2, threads_per_worker=1, gpus_per_task=0.5)"
        for ids, visible, pinned in ex.map(_ray_where, range(2)):
            assert len(ids) == 1 and ids[0] in ("0", "1")
            assert (visible, pinned) == (ids[0], "cuda:0")

    assert RayExecutor(gpus_per_task=2).num_workers == 1  # 2 GPUs / 2 per task
    ex = make_executor("ray", gpus=[0], workers_per_gpu=4)
    assert ex.gpus_per_task == 0.25
    assert make_executor("ray").gpus_per_task == 0.0

    with caplog.at_level(logging.WARNING, logger="fedp13n.execution.ray_executor"):
        RayExecutor(gpus_per_task=3)  # more than the cluster has: may hang, so warned
    assert "no task could ever start" in caplog.text


class _FakeRay:
    """Just what RayExecutor.__init__ asks of Ray, for a cluster with ``resources``."""

    def __init__(self, resources: dict[str, float]) -> None:
        self.resources, self.started, self.stopped = resources, False, False

    def is_initialized(self) -> bool:
        return self.started and not self.stopped

    def init(self, address=None, **kwargs) -> None:
        self.started = True

    def cluster_resources(self) -> dict[str, float]:
        return self.resources

    def shutdown(self) -> None:
        self.stopped = True

    def remote(self, **options):
        return lambda fn: fn


def test_ray_workers_default_to_what_the_cluster_gpus_hold(monkeypatch):
    from fedp13n.execution import ray_executor

    for resources, gpus_per_task, expected in [
        ({"CPU": 8, "GPU": 1}, 0.25, 4),
        ({"CPU": 8, "GPU": 2}, 1 / 3, 6),
        ({"CPU": 4, "GPU": 2}, 0.25, 4),  # the CPUs bound it too
        ({"CPU": 8, "GPU": 4}, 2, 2),
        ({"CPU": 8}, 0.0, 8),
    ]:
        monkeypatch.setattr(ray_executor, "_import_ray", lambda r=resources: _FakeRay(r))
        ex = ray_executor.RayExecutor(gpus_per_task=gpus_per_task)
        assert ex.num_workers == expected, (resources, gpus_per_task)
    fake = _FakeRay({"CPU": 8})
    monkeypatch.setattr(ray_executor, "_import_ray", lambda: fake)
    with pytest.raises(ValueError, match=r"has 0 GPUs, so no task could ever start") as info:
        ray_executor.RayExecutor(gpus_per_task=0.5)  # a local instance without GPUs
    assert "\n" not in str(info.value) and fake.stopped  # and the instance it started stopped


def test_bad_gpus_per_task_is_a_one_line_error():
    from fedp13n.execution.ray_executor import RayExecutor

    for bad in (-1, 1.5, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="gpus_per_task must be 0") as info:
            RayExecutor(gpus_per_task=bad)  # checked before Ray starts
        assert "\n" not in str(info.value)
