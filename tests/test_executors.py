"""Executors: task order, errors, shared objects, and bit-identical numbers everywhere."""

from __future__ import annotations

import gc
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import torch
from torch import nn

from fedp13n.data.client_data import ClientData
from fedp13n.execution import (
    ClientTaskTimeout,
    ClientWorkError,
    InProcessExecutor,
    LocalProcessExecutor,
    make_executor,
    sharing,
)
from fedp13n.execution import factory as factory_module
from fedp13n.utils.seeding import derive_rng, derive_seed

# Ray workers cannot import this test module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def procs2():
    with LocalProcessExecutor(num_workers=2) as ex:
        yield ex


@pytest.fixture(scope="module")
def procs1():
    with LocalProcessExecutor(num_workers=1) as ex:
        yield ex


@pytest.fixture(scope="module")
def ray_executor():
    ray = pytest.importorskip("ray")
    from fedp13n.execution.ray_executor import RayExecutor

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's own cloudpickle
    ray.init(num_cpus=2, include_dashboard=False, address="local", log_to_driver=False)
    try:
        with RayExecutor() as ex:
            yield ex
    finally:
        ray.shutdown()


def _small_client_data() -> ClientData:
    rng = np.random.default_rng(0)
    sizes = {"a": 5, "b": 3, "c": 7}
    return ClientData.from_clients(
        (c, rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), np.arange(n) % 62)
        for c, n in sizes.items()
    )


# -- a small deterministic training step (conv net with dropout, torch RNG, shuffling) ------
class TinyCNN(nn.Module):
    """The layers of TFF's conv-dropout EMNIST model, much narrower."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.conv2 = nn.Conv2d(4, 8, 3)
        self.drop1 = nn.Dropout(0.25)
        self.fc1 = nn.Linear(8 * 12 * 12, 16)
        self.drop2 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(16, 62)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x.unsqueeze(1)))))
        x = self.drop1(torch.max_pool2d(x, 2)).flatten(1)
        return self.fc2(self.drop2(torch.relu(self.fc1(x))))


def initial_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(derive_seed(7, "init"))
    return TinyCNN().state_dict()


def train_client(task) -> dict[str, torch.Tensor]:
    """3 SGD steps on one client, randomness derived from (seed, round, client)."""
    weights_ref, data_ref, client_id = task
    model = TinyCNN()
    model.load_state_dict(weights_ref.get())
    data = data_ref.get().create_dataset(client_id)
    torch.manual_seed(derive_seed(7, "dropout", 1, client_id))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = data.batches(2, shuffle=True, generator=derive_rng(7, "shuffle", 1, client_id))
    for _, (x, y) in zip(range(3), batches, strict=False):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.state_dict()


def _train_all(ex) -> list[dict[str, torch.Tensor]]:
    cd = _small_client_data()
    w_ref, d_ref = ex.share(initial_weights()), ex.share(cd)
    return ex.map(train_client, [(w_ref, d_ref, c) for c in ("c", "a", "b", "a")])


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for wa, wb in zip(a, b, strict=True):
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), k


def test_training_is_bit_identical_in_process_and_in_one_or_two_worker_processes(procs1, procs2):
    reference = _train_all(InProcessExecutor(threads_per_worker=1))
    # The check can fail: clients differ from each other and from the start, the repeated
    # client is identical to itself.
    init = initial_weights()
    assert not torch.equal(reference[0]["fc1.weight"], init["fc1.weight"])
    assert not torch.equal(reference[0]["fc1.weight"], reference[1]["fc1.weight"])
    _assert_same([reference[1]], [reference[3]])
    _assert_same(reference, _train_all(procs1))
    _assert_same(reference, _train_all(procs2))


@pytest.mark.ray
def test_training_is_bit_identical_on_ray(ray_executor):
    reference = _train_all(InProcessExecutor(threads_per_worker=1))
    _assert_same(reference, _train_all(ray_executor))


# -- order, closures, errors -------------------------------------------------------------------
def test_results_come_back_in_task_order_from_both_workers(procs2):
    k = 3  # captured by the lambda: closures travel with cloudpickle
    out = procs2.map(lambda i: (i * k, os.getpid()), range(23))
    assert [v for v, _ in out] == [3 * i for i in range(23)]
    assert len({pid for _, pid in out}) == 2
    assert os.getpid() not in {pid for _, pid in out}
    assert procs2.map(lambda i: i, []) == []


def test_chunk_size_one_keeps_order(procs1, monkeypatch):
    monkeypatch.setattr(procs1, "chunk_size", 1)
    assert procs1.map(lambda s: s.upper(), ["x", "y", "z"]) == ["X", "Y", "Z"]


def test_default_chunks_are_small_for_few_tasks_and_bounded_for_many():
    from fedp13n.execution.process_pool import default_chunk_size

    assert [default_chunk_size(n, 2) for n in (1, 10, 16, 17, 100, 10_000)] == [1, 1, 1, 2, 7, 16]


def _fails_on_seven(i: int) -> int:
    return 1 // (i - 7)


def test_a_failing_task_is_named_with_its_index_and_the_worker_traceback(procs2):
    with pytest.raises(ClientWorkError, match=r"task 7 failed .*ZeroDivisionError") as info:
        procs2.map(_fails_on_seven, range(10))
    assert "_fails_on_seven" in str(info.value)  # the worker's traceback text
    assert procs2.map(lambda i: i + 1, range(4)) == [1, 2, 3, 4]  # still usable


def _fail_fast_or_answer_big(i: int) -> bytes:
    if i == 0:
        raise ValueError("client 0 is broken")
    time.sleep(0.3)
    return b"x" * (4 << 20)  # larger than a pipe's buffer


def test_a_map_after_a_failure_is_not_blocked_by_late_large_answers(procs2):
    with pytest.raises(ClientWorkError, match="task 0 failed .*client 0 is broken"):
        procs2.map(_fail_fast_or_answer_big, [0, 1])
    big = b"y" * (4 << 20)  # the next function is large too: both sides would block
    assert procs2.map(lambda i: len(big) + i, [0, 1, 2]) == [4 << 20, (4 << 20) + 1, (4 << 20) + 2]


def test_a_worker_that_keeps_dying_gives_a_clear_error_after_the_retries(procs2, monkeypatch):
    monkeypatch.setattr(procs2, "max_retries", 1)

    def die_on_four(i: int) -> int:
        if i == 4:
            os.kill(os.getpid(), signal.SIGKILL)
        return i

    with pytest.raises(ClientWorkError, match=r"killed by signal SIGKILL.*out-of-memory") as info:
        procs2.map(die_on_four, range(8))
    assert "before returning tasks 4 (tried 2 times)" in str(info.value)
    assert procs2.map(lambda i: -i, range(5)) == [0, -1, -2, -3, -4]
    assert procs2.num_workers == 2


def _killed_once_then_train(task):
    """A client's work whose worker is killed -9 the first time it runs client 'b'."""
    marker, inner = task
    if inner[2] == "b" and not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return train_client(inner), os.getpid()


def test_a_worker_killed_during_a_map_is_replaced_and_the_results_are_unchanged(procs2, tmp_path):
    reference = _train_all(InProcessExecutor(threads_per_worker=1))
    cd = _small_client_data()
    w_ref, d_ref = procs2.share(initial_weights()), procs2.share(cd)
    marker = str(tmp_path / "killed-once")
    pids_before = {w.process.pid for w in procs2._workers}
    tasks = [(marker, (w_ref, d_ref, c)) for c in ("c", "a", "b", "a")]
    out = procs2.map(_killed_once_then_train, tasks)
    assert os.path.exists(marker)  # a worker was killed
    _assert_same(reference, [weights for weights, _ in out])
    assert {w.process.pid for w in procs2._workers} - pids_before  # one was replaced
    (killed,) = pids_before - {w.process.pid for w in procs2._workers}
    # client 'b' was retried on a live worker (the replacement or the other one, whichever
    # is free first: under load either happens)
    assert out[2][1] != killed


def _stop_self_on(task):
    i, stop_on = task
    if i == stop_on:
        os.kill(os.getpid(), signal.SIGSTOP)  # a hung worker: alive, never answers
    time.sleep(0.2)
    return i * i


def test_a_stopped_worker_times_out_naming_the_task_and_is_replaced():
    with LocalProcessExecutor(num_workers=2, task_timeout=1.5) as ex:
        assert ex.map(_stop_self_on, [(i, -1) for i in range(6)]) == [i * i for i in range(6)]
        pids = {w.process.pid for w in ex._workers}
        start = time.monotonic()
        with pytest.raises(ClientTaskTimeout, match=r"^task 3 did not finish within ") as info:
            ex.map(_stop_self_on, [(i, 3) for i in range(6)])
        assert time.monotonic() - start < 10
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, ClientWorkError)
        assert "task_timeout=1.5 s" in str(info.value) and "stopped" in str(info.value)
        stopped = (pids - {w.process.pid for w in ex._workers}).pop()  # replaced
        with pytest.raises(ProcessLookupError):
            os.kill(stopped, 0)  # killed and reaped
        assert ex.map(_stop_self_on, [(i, -1) for i in range(4)]) == [0, 1, 4, 9]


def test_a_stopped_worker_fails_the_map_without_any_timeout_set():
    """The always-on liveness check: no task_timeout, yet a SIGSTOPped worker holding a
    task fails the map (after stopped_grace) instead of stalling it forever."""
    with LocalProcessExecutor(num_workers=2) as ex:
        assert ex.task_timeout is None
        ex.stopped_grace = 1.0
        # workers started (torch imported) before the clock starts: a loaded machine takes
        # seconds to start them, which is not what is measured here
        assert ex.map(_stop_self_on, [(i, -1) for i in range(2)]) == [0, 1]
        start = time.monotonic()
        with pytest.raises(ClientWorkError, match=r"has been stopped \(SIGSTOP"):
            ex.map(_stop_self_on, [(i, 2) for i in range(6)])
        assert time.monotonic() - start < 10
        assert ex.map(_stop_self_on, [(i, -1) for i in range(4)]) == [0, 1, 4, 9]


def test_timeouts_and_retries_are_checked():
    with pytest.raises(ValueError, match="task_timeout must be positive"):
        LocalProcessExecutor(1, task_timeout=0)
    with pytest.raises(ValueError, match="max_retries must be an integer >= 0"):
        LocalProcessExecutor(1, max_retries=-1)


def test_unpicklable_function_is_a_clear_error(procs1):
    lock = threading.Lock()
    with pytest.raises(TypeError, match="does not pickle"):
        procs1.map(lambda i: lock.locked(), [1])


# -- shared objects ----------------------------------------------------------------------------
def test_client_data_with_a_path_is_shared_by_path_and_memory_mapped(procs2, tmp_path):
    cd = ClientData.load(_small_client_data().save(tmp_path / "cache"))  # in RAM here
    ref = procs2.share(cd)
    assert len(pickle.dumps(ref)) < 1024
    assert ref.get() is cd  # the driver keeps its own object

    def look(client_id):
        d = ref.get()
        return isinstance(d.x, np.memmap), int(d.create_dataset(client_id).x.sum(dtype=np.int64))

    out = procs2.map(look, list(cd.client_ids))
    expected = [
        int(cd.x[lo:hi].sum(dtype=np.int64))
        for lo, hi in zip(cd.offsets[:-1], cd.offsets[1:], strict=True)
    ]
    assert out == [(True, s) for s in expected]


def test_client_data_without_a_path_is_saved_once_and_memory_mapped(tmp_path):
    cd = _small_client_data()
    ex = LocalProcessExecutor(num_workers=1)
    try:
        ref = ex.share(cd)
        assert len(pickle.dumps(ref)) < 1024
        out = ex.map(lambda c: (isinstance(ref.get().x, np.memmap), ref.get().size(c)), ["b", "c"])
        assert out == [(True, 3), (True, 7)]
        shared_dir = Path(ref.path).parent
        assert shared_dir.is_dir()
    finally:
        ex.close()
    assert not shared_dir.exists()  # temp files go with the executor
    with pytest.raises(RuntimeError, match="closed"):
        ex.map(abs, [1])


class _TextFile:
    """Any class can be shared by path: the share-by-path protocol of execution.sharing."""

    def __init__(self, text: str, path: Path | None = None) -> None:
        self.text, self.path = text, path

    def to_shared_path(self, scratch: Path | None) -> Path | None:
        if self.path is None and scratch is not None:
            scratch.write_text(self.text)
            self.path = scratch
        return self.path

    @classmethod
    def from_shared_path(cls, path: str) -> _TextFile:
        return cls(Path(path).read_text() + " (opened in a worker)", Path(path))


def test_any_object_of_the_share_by_path_protocol_is_shared_by_its_path(procs1):
    obj = _TextFile("hello")
    ref = procs1.share(obj)
    assert ref.get() is obj and Path(ref.path).read_text() == "hello"
    assert len(pickle.dumps(ref)) < 1024
    assert procs1.map(lambda _: ref.get().text, [0, 1]) == ["hello (opened in a worker)"] * 2


def test_execution_imports_nothing_from_other_fedp13n_layers():
    """Only itself and the bottom layer (utils): in particular nothing from data."""
    import ast

    import fedp13n.execution

    for file in Path(fedp13n.execution.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("fedp13n"):
                    ok = name.startswith(("fedp13n.execution", "fedp13n.utils"))
                    assert ok, (file.name, name)


def _use_weights(task):
    ref, i = task
    w = ref.get()
    return os.getpid(), id(w), float(w["w"][i] + w["b"][0])


def test_generic_object_is_read_once_per_worker_and_dropped_with_its_ref(procs2):
    weights = {"w": np.arange(6.0), "b": np.ones(2)}
    ref = procs2.share(weights)
    assert len(pickle.dumps(ref)) < 1024
    tasks = [(ref, i) for i in range(6)]
    first, second = procs2.map(_use_weights, tasks), procs2.map(_use_weights, tasks)
    assert [v for _, _, v in first] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    ids_by_pid: dict[int, set[int]] = {}
    for pid, obj_id, _ in first + second:
        ids_by_pid.setdefault(pid, set()).add(obj_id)
    assert all(len(ids) == 1 for ids in ids_by_pid.values())  # unpickled once per worker
    file = Path(ref.file)
    assert file.is_file()
    del ref, tasks
    gc.collect()
    assert not file.exists()


@pytest.mark.ray
def test_ray_order_errors_and_shared_objects(ray_executor):
    k = 5
    assert ray_executor.map(lambda i: i * k, range(9)) == [5 * i for i in range(9)]
    with pytest.raises(ClientWorkError, match=r"task 7 failed .*ZeroDivisionError"):
        ray_executor.map(_fails_on_seven, range(9))
    cd = _small_client_data()
    data_ref, obj_ref = ray_executor.share(cd), ray_executor.share({"k": 10})
    assert len(cloudpickle.dumps(obj_ref)) < 1024
    out = ray_executor.map(lambda c: data_ref.get().size(c) * obj_ref.get()["k"], ["a", "c"])
    assert out == [50, 70]


@pytest.mark.ray
def test_ray_worker_death_is_a_clear_error(ray_executor):
    from fedp13n.execution.ray_executor import RayExecutor

    with RayExecutor(max_retries=0) as ex:  # joins the running instance, no retry
        with pytest.raises(ClientWorkError, match=r"tasks 2: WorkerCrashedError"):
            ex.map(lambda i: os._exit(1) if i == 2 else i, range(4))
        assert ex.map(lambda i: -i, range(3)) == [0, -1, -2]


# -- factory -----------------------------------------------------------------------------------
def test_make_executor_checks_its_arguments_with_one_line_errors_naming_the_fix():
    cases = [
        (dict(kind="threads"), "unknown executor 'threads'; choose one of auto, in-process"),
        (dict(kind="processes", num_workers=0), "num_workers must be a positive integer"),
        (dict(kind="in-process", threads_per_worker=0), "threads_per_worker must be a positive"),
        (
            dict(kind="in-process", num_workers=2),
            "executor 'in-process' runs one task at a time, so num_workers (--workers) must be "
            "1, got 2; use executor 'processes' for more workers.",
        ),
        (dict(kind="processes", ray_address="auto"), "only applies to executor 'ray'"),
        (dict(kind="in-process", task_timeout=5), "task_timeout applies to executor 'processes'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError) as info:
            make_executor(**kwargs)
        assert message in str(info.value)
        assert "\n" not in str(info.value)
    ex = make_executor("in-process", threads_per_worker=2)
    assert isinstance(ex, InProcessExecutor) and ex.threads_per_worker == 2


@pytest.mark.parametrize(
    ("cores", "threads", "expected"),
    [(1, 1, None), (2, 1, 2), (16, 1, 16), (16, 4, 4), (2, 2, None)],
)
def test_auto_uses_one_single_thread_worker_per_core(monkeypatch, cores, threads, expected):
    built = []
    monkeypatch.setattr(factory_module, "usable_cores", lambda: cores)
    monkeypatch.setattr(
        factory_module, "LocalProcessExecutor", lambda n, t, **kw: built.append((n, t)) or "pool"
    )
    ex = make_executor("auto", threads_per_worker=threads)
    if expected is None:
        assert isinstance(ex, InProcessExecutor) and built == []
    else:
        assert ex == "pool" and built == [(expected, threads)]


def test_an_executor_dropped_without_close_stops_its_workers_and_removes_its_files():
    ex = LocalProcessExecutor(num_workers=1)
    ref = ex.share([1, 2, 3])
    shared_dir = Path(ref.file).parent
    process = ex._workers[0].process
    assert ex.map(lambda i: i, [5]) == [5]
    del ex, ref
    gc.collect()
    process.join(timeout=10)
    assert not process.is_alive()
    assert not shared_dir.exists()


def test_ray_executor_without_ray_says_how_to_install_it(monkeypatch):
    from fedp13n.execution.ray_executor import RayExecutor

    monkeypatch.setitem(sys.modules, "ray", None)  # makes "import ray" fail
    for build in (RayExecutor, lambda: make_executor("ray")):
        with pytest.raises(ImportError, match=r"pip install 'fedp13n\[ray\]'") as info:
            build()
        assert "\n" not in str(info.value)


# -- shared-data directories: SIGTERM, SIGKILL, stale ones --------------------------------------
_SHARE_AND_WAIT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from fedp13n.data.client_data import ClientData
    from fedp13n.execution import LocalProcessExecutor
    ex = LocalProcessExecutor(num_workers=1)
    cd = ClientData.from_clients([("a", np.zeros((3, 28, 28), np.uint8), np.arange(3))])
    ref = ex.share(cd)
    assert ex.map(lambda c: ref.get().size(c), ["a"]) == [3]
    print(ex._tmpdir, flush=True)
    time.sleep(60)
    """
)


def _start_sharing_child(tmp_path) -> tuple[subprocess.Popen, Path]:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    child = subprocess.Popen(
        [sys.executable, "-c", _SHARE_AND_WAIT], stdout=subprocess.PIPE, text=True, env=env
    )
    shared_dir = Path(child.stdout.readline().strip())
    assert shared_dir.parent == tmp_path and shared_dir.is_dir()
    assert shared_dir.name.startswith(f"fedp13n-share-{child.pid}-")
    assert any(shared_dir.iterdir())  # the saved ClientData
    return child, shared_dir


def test_sigterm_removes_the_shared_directory(tmp_path):
    child, shared_dir = _start_sharing_child(tmp_path)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 128 + signal.SIGTERM  # a clean exit
    assert not shared_dir.exists()
    assert list(tmp_path.iterdir()) == []


def test_the_next_executor_removes_directories_left_by_a_killed_process(tmp_path, monkeypatch):
    child, shared_dir = _start_sharing_child(tmp_path)
    child.kill()
    child.wait(timeout=30)
    assert shared_dir.is_dir()  # SIGKILL leaves it behind
    alive = tmp_path / f"fedp13n-share-{os.getppid()}-kept"  # a running process's: kept
    alive.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    LocalProcessExecutor(num_workers=1).close()
    assert not shared_dir.exists()
    assert alive.is_dir()
    assert sharing.sweep_stale_dirs(tmp_path) == []
