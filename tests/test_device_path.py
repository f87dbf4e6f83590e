"""Client work on a device (issue 13): the clients' data resident there, models moved
there, results back on the CPU, the same numbers as the CPU path.

On a machine without a GPU the device path is exercised on the CPU itself: with
``work_device`` answering "cpu" for a CUDA request, every step of the device path runs
(resident copies, batches cut from them by index tensors, models moved, deltas brought
back) and must give the CPU path's numbers bit for bit. The CUDA tests compare a GPU with
the CPU (float tolerance) and a GPU with itself (bit for bit); they skip without CUDA.
"""

from __future__ import annotations

import functools
import math
import pickle

import numpy as np
import pytest
import torch
from test_engine import NUM_CLASSES, global_weights, make_clients, small_cnn

import fedp13n.utils.device as dev
from fedp13n.algorithms import ClientSelection, build_weighted_fed_avg
from fedp13n.data import ClientData, ClientDataset
from fedp13n.data.client_data import features_to_tensor, labels_to_tensor
from fedp13n.execution import InProcessExecutor
from fedp13n.personalization import build_personalization_eval, build_personalize_fn, evaluate_fn
from fedp13n.personalization.strategies.early_stopping import (
    build_early_stopping_personalize_fn,
)
from fedp13n.personalization.strategies.head_only import build_head_only_personalize_fn
from fedp13n.personalization.strategies.interpolation import build_interpolation_personalize_fn
from fedp13n.personalization.strategies.proximal import build_proximal_personalize_fn

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


# -- resident data ----------------------------------------------------------------------------
@pytest.mark.parametrize("uint8", [True, False])
def test_resident_batches_equal_host_batches(uint8):
    (d,) = make_clients([11], seed=2, uint8=uint8)
    r = d.to("cpu")
    assert d.resident is None and r.resident is not None and r.device == torch.device("cpu")
    assert r.to("cpu") is r  # already there: no second copy
    # uint8 pixels stay bytes on the device; float features are kept as float32
    assert r.resident[0].dtype == (torch.uint8 if uint8 else torch.float32)
    for index in (np.array([3, 0, 10, 3]), slice(2, 9), np.array([], dtype=np.int64)):
        xr, yr = r.batch(index)
        xh, yh = features_to_tensor(d.x[index]), labels_to_tensor(d.y[index])
        assert xr.dtype == xh.dtype == torch.float32 and yr.dtype == yh.dtype == torch.int64
        assert torch.equal(xr, xh) and torch.equal(yr, yh)
    held = r.subset(np.array([1, 4, 7]))
    assert held.resident is not None
    assert torch.equal(held.batch(slice(None))[0], features_to_tensor(d.x[[1, 4, 7]]))
    assert torch.equal(r.tensors()[0], d.tensors()[0])
    got = [torch.equal(a, b) for (a, _), (b, _) in zip(r.batches(4), d.batches(4), strict=True)]
    assert got == [True, True, True]


def test_client_data_is_copied_to_a_device_once_and_sliced():
    datasets = make_clients([5, 0, 7], seed=3)
    cd = ClientData.from_clients((f"c{i}", d.x, d.y) for i, d in enumerate(datasets))
    first = cd.create_dataset("c2", device="cpu")
    full_x, full_y = cd.on_device("cpu")
    assert cd.on_device("cpu")[0] is full_x  # cached: one copy per device
    assert full_x.shape == (12, 1, 8, 8) and full_x.dtype == torch.uint8
    # the client's resident tensors are views into the one copy, at its offset
    assert first.resident[0].data_ptr() == full_x[5:].data_ptr()
    assert torch.equal(first.batch(slice(None))[0], features_to_tensor(datasets[2].x))
    assert len(cd.create_dataset("c1", device="cpu").resident[0]) == 0
    assert cd.create_dataset("c0").resident is None  # no device: the host arrays only


def test_a_resident_copy_never_travels():
    (d,) = make_clients([4], seed=1)
    back = pickle.loads(pickle.dumps(d.to("cpu")))
    assert back.resident is None and np.array_equal(back.x, d.x)
    cd = ClientData.from_clients([("a", d.x, d.y)])
    cd.on_device("cpu")
    assert pickle.loads(pickle.dumps(cd))._device_copies == {}
    assert cd._device_copies  # the original keeps its copy


# -- where client work runs -------------------------------------------------------------------
def test_work_device_on_a_pinned_worker(monkeypatch):
    monkeypatch.setattr(dev, "_pinned", torch.device("cuda", 0))
    monkeypatch.setattr(dev, "_determinism", True)  # already set up: no kernel switch here
    assert dev.work_device("cuda:3") == torch.device("cuda", 0)  # the pinned GPU wins
    assert dev.work_device("cuda") == torch.device("cuda", 0)
    assert dev.work_device("cpu") == torch.device("cpu")  # CPU work stays on the CPU


def test_module_device():
    assert dev.module_device(small_cnn()) == torch.device("cpu")
    assert dev.module_device(torch.nn.ReLU()) == torch.device("cpu")  # no parameters


@pytest.mark.skipif(CUDA, reason="checks the message of a machine without CUDA")
def test_the_library_refuses_a_device_this_machine_lacks():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        build_weighted_fed_avg(small_cnn, device="cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        build_personalization_eval(small_cnn, {}, evaluate_fn, device="tpu")
    with pytest.raises(ValueError, match="tf32.*CUDA"):
        build_weighted_fed_avg(small_cnn, precision="tf32")


# -- the device path, exercised on the CPU ----------------------------------------------------
@pytest.fixture
def cuda_means_cpu(monkeypatch):
    """``work_device`` answers the CPU for a CUDA request, and every batch records whether
    it was cut from a resident copy."""
    real = dev.work_device

    def fake(requested, *, deterministic=True):
        return torch.device("cpu") if str(requested).startswith("cuda") else real(requested)

    monkeypatch.setattr(dev, "work_device", fake)
    monkeypatch.setattr(dev, "check_compute", lambda d, p: (str(d), p))
    seen: list[bool] = []
    batch = ClientDataset.batch

    def spy(self, index, device=None):
        seen.append(self.resident is not None)
        return batch(self, index, device)

    monkeypatch.setattr(ClientDataset, "batch", spy)
    return seen


def _fedavg(device: str, executor=None, model_fn=small_cnn):
    datasets = make_clients([13, 0, 7, 21, 4], seed=4)
    cd = ClientData.from_clients((f"c{i}", d.x, d.y) for i, d in enumerate(datasets))
    process = build_weighted_fed_avg(
        model_fn,
        functools.partial(torch.optim.SGD, lr=0.1),
        client_epochs=2,
        batch_size=5,
        seed=3,
        client_pipeline="tff",
        device=device,
        executor=executor,
    )
    state = process.initialize()
    rounds = []
    for _ in range(2):
        state, metrics = process.next(state, ClientSelection(cd, list(cd.client_ids)))
        rounds.append((metrics.loss, metrics.accuracy, metrics.num_examples))
    # the TFF-style list of datasets travels by value: its own copy per task
    state, metrics = process.next(state, datasets)
    rounds.append((metrics.loss, metrics.accuracy, metrics.num_examples))
    return state.model, rounds


def _strategies():
    sgd = functools.partial(torch.optim.SGD, lr=0.05)
    common = dict(batch_size=4, num_epochs=2, num_epochs_per_eval=1)
    return {
        "sgd": functools.partial(build_personalize_fn, sgd, **common),
        "adam": functools.partial(
            build_personalize_fn, functools.partial(torch.optim.Adam, lr=0.01), **common
        ),
        "prox": functools.partial(build_proximal_personalize_fn, sgd, lam=0.5, **common),
        "mix": functools.partial(build_interpolation_personalize_fn, sgd, **common),
        "stop": functools.partial(build_early_stopping_personalize_fn, sgd, **common),
        "head": functools.partial(build_head_only_personalize_fn, sgd, **common),
    }


def _personalize(device: str, executor=None):
    trains, tests = make_clients([9, 14, 0, 5], seed=7), make_clients([6, 3, 4, 0], seed=8)
    inputs = [
        {"client_id": f"c{i}", "train_data": tr, "test_data": te}
        for i, (tr, te) in enumerate(zip(trains, tests, strict=True))
    ]
    p13n = build_personalization_eval(
        small_cnn, _strategies(), evaluate_fn, 10, seed=5, device=device, executor=executor
    )
    return p13n(global_weights(small_cnn), inputs).to_dict()


def test_fedavg_device_path_equals_the_cpu_path(cuda_means_cpu):
    plain_weights, plain_rounds = _fedavg("cpu")
    assert cuda_means_cpu and not any(cuda_means_cpu)  # the CPU path: host batches
    cuda_means_cpu.clear()
    weights, rounds = _fedavg("cuda")
    assert cuda_means_cpu and all(cuda_means_cpu)  # every batch cut from a resident copy
    assert rounds == plain_rounds
    assert all(torch.equal(weights[k], plain_weights[k]) for k in weights)
    assert rounds[0][2] == 2 * (13 + 7 + 21 + 4)  # two epochs of every example


def test_personalization_device_path_equals_the_cpu_path(cuda_means_cpu):
    plain = _personalize("cpu")
    assert not any(cuda_means_cpu)
    cuda_means_cpu.clear()
    got = _personalize("cuda")
    assert cuda_means_cpu and all(cuda_means_cpu)
    assert got == plain
    assert set(got) >= {"baseline_metrics", "sgd", "prox", "mix", "stop", "head"}
    # trained for real: fine-tuning moved the test loss of the clients with both kinds of data
    base, tuned = got["baseline_metrics"]["loss"], got["sgd"]["epoch_2"]["loss"]
    assert len(base) == 4 and all(
        abs(a - b) > 1e-4 for a, b in zip(base[:2], tuned[:2], strict=True)
    )


# -- on a GPU ---------------------------------------------------------------------------------
def _max_diff(a, b):
    return max(float((a[k].cpu() - b[k].cpu()).abs().max()) for k in a)


@needs_cuda
def test_fedavg_on_cuda_matches_the_cpu_and_itself():
    cpu_w, cpu_rounds = _fedavg("cpu")
    gpu_w, gpu_rounds = _fedavg("cuda")
    again_w, again_rounds = _fedavg("cuda")
    assert _max_diff(cpu_w, gpu_w) < 1e-4
    assert all(abs(a[0] - b[0]) < 1e-4 for a, b in zip(cpu_rounds, gpu_rounds, strict=True))
    assert again_rounds == gpu_rounds and _max_diff(gpu_w, again_w) == 0.0  # deterministic


@needs_cuda
def test_personalization_on_cuda_matches_the_cpu():
    cpu, gpu = _personalize("cpu"), _personalize("cuda")
    for name in cpu:
        if name in ("client_ids", "seed"):
            continue
        a, b = np.array(_leaves(cpu[name])), np.array(_leaves(gpu[name]))
        assert np.allclose(a, b, atol=1e-3, equal_nan=True), name


def _leaves(tree):
    """The numbers of a result, as floats (a client without test examples has loss None:
    NaN, which compares equal to NaN below)."""
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _leaves(v)]
    return [math.nan if x is None else float(x) for x in tree]


@needs_cuda
def test_worker_processes_sharing_a_gpu_equal_one_process():
    from fedp13n.execution import LocalProcessExecutor

    one_w, one_rounds = _fedavg("cuda", InProcessExecutor())
    with LocalProcessExecutor(2, gpus=[0]) as ex:
        two_w, two_rounds = _fedavg("cuda", ex)
        p13n_two = _personalize("cuda", ex)
    assert two_rounds == one_rounds and _max_diff(one_w, two_w) == 0.0
    assert p13n_two == _personalize("cuda")


def test_num_classes_of_the_test_model():
    assert small_cnn()(torch.zeros(1, 1, 8, 8)).shape == (1, NUM_CLASSES)


@pytest.mark.skipif(CUDA, reason="checks the message of a machine without CUDA")
@pytest.mark.parametrize(
    "args,message",
    [
        (["--device", "cuda"], "error: device 'cuda' is not available: no CUDA GPU"),
        (["--device", "cuda:x"], "error: invalid device 'cuda:x'"),
        (["--precision", "tf32", "--device", "cpu"], "error: precision 'tf32' is a CUDA setting"),
        (["--workers-per-gpu", "0"], "error: workers_per_gpu must be a positive integer"),
    ],
)
def test_the_cli_refuses_a_device_it_lacks_before_any_work(tmp_path, args, message):
    from typer.testing import CliRunner

    from fedp13n.cli.main import app

    out = tmp_path / "run"
    res = CliRunner().invoke(
        app, ["run", "--dataset", "synthetic", *args, "--output-dir", str(out), "--no-progress"]
    )
    assert res.exit_code == 2
    assert message in res.output
    assert "Traceback" not in res.output
    assert not out.exists()  # refused before a file was written or the data loaded
