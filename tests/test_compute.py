"""One ``Compute`` (device, precision, determinism, engine): checked once by
``Compute.resolve`` where a run or a public builder starts, passed down as one value.

Every refusal is one line, word for word; a builder given ``compute=`` computes exactly
what it computes given the same settings as separate keywords."""

from __future__ import annotations

import functools
import warnings
from types import SimpleNamespace

import pytest
import torch
from test_engine import global_weights, make_clients, small_cnn

from fedp13n.algorithms import ClientSelection, build_weighted_fed_avg
from fedp13n.data import ClientData
from fedp13n.engine import MultiClientEngine
from fedp13n.personalization import build_personalization_eval, build_personalize_fn, evaluate_fn
from fedp13n.utils.device import Compute

CUDA = torch.cuda.is_available()
no_cuda = pytest.mark.skipif(CUDA, reason="checks the messages of a machine without CUDA")


def _refused(error, message, **kwargs):
    with pytest.raises(error) as e:
        Compute.resolve(**kwargs)
    assert str(e.value) == message


# -- Compute.resolve ----------------------------------------------------------------------------
def test_resolve_normalises_what_it_is_given():
    assert Compute.resolve() == Compute("cpu", "fp32", True, None)
    assert Compute.resolve(" CPU ", "AUTO", False) == Compute("cpu", "fp32", False, None)
    assert Compute.resolve(torch.device("cpu"), "fp32") == Compute("cpu", "fp32", True, None)
    assert Compute.resolve("auto").device == ("cuda" if CUDA else "cpu")
    with warnings.catch_warnings():  # bf16 on a CPU without native bf16 warns (once)
        warnings.simplefilter("ignore", RuntimeWarning)
        assert Compute.resolve("cpu", "bf16").precision == "bf16"


@no_cuda
def test_resolve_refuses_devices_this_machine_lacks():
    _refused(
        ValueError,
        "unknown device 'tpu'; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' (available: cpu).",
        device="tpu",
    )
    _refused(
        ValueError,
        f"device 'cuda' is not available: no CUDA GPU (or a CPU-only torch "
        f"{torch.__version__}); available: cpu.",
        device="cuda",
    )
    _refused(
        ValueError, "invalid device 'cuda:x': use 'cuda' or 'cuda:N'; available: cpu.",
        device="cuda:x",
    )  # fmt: skip


def test_resolve_refuses_precisions_and_flags():
    _refused(
        ValueError, "unknown precision 'fp16'; choose one of auto, fp32, bf16, tf32.",
        precision="fp16",
    )  # fmt: skip
    _refused(
        ValueError,
        "precision 'tf32' is a CUDA setting (TensorFloat-32 on NVIDIA GPUs), not for device "
        "'cpu'; use 'fp32' or 'bf16' there.",
        device="cpu",
        precision="tf32",
    )
    _refused(TypeError, "deterministic must be True or False, got 'no'.", deterministic="no")
    _refused(
        TypeError,
        "engine must be a fedp13n.engine.MultiClientEngine, got object.",
        engine=object(),
    )


def test_resolve_follows_the_engine_or_says_why_not():
    engine = MultiClientEngine(small_cnn)
    assert engine.compute == Compute("cpu", "fp32", True, None)
    got = Compute.resolve(engine=engine, deterministic=False)
    assert (got.device, got.precision, got.deterministic) == ("cpu", "fp32", False)
    assert got.engine is engine and got.without_engine() == Compute("cpu", "fp32", False)
    assert Compute.resolve("cpu", "fp32", engine=engine).engine is engine
    _refused(
        ValueError,
        "precision='bf16' but the engine computes in fp32; leave precision out (it follows "
        "the engine) or build the MultiClientEngine with that precision.",
        precision="bf16",
        engine=engine,
    )
    elsewhere = SimpleNamespace(compute=Compute("cuda:1", "fp32"))  # as an engine on GPU 1
    _refused(
        ValueError,
        "device='cpu' but the engine runs on cuda:1; leave device out (it follows the "
        "engine) or build the MultiClientEngine on that device.",
        device="cpu",
        engine=elsewhere,
    )


def test_a_builder_takes_compute_or_the_keywords_not_both():
    compute = Compute.resolve()
    for build in (
        functools.partial(build_weighted_fed_avg, small_cnn),
        functools.partial(build_personalization_eval, small_cnn, {}, evaluate_fn),
    ):
        for extra in ({"device": "cpu"}, {"precision": "fp32"}, {"deterministic": False}):
            with pytest.raises(ValueError) as e:
                build(compute=compute, **extra)
            assert str(e.value) == (
                "give compute= or device=/precision=/deterministic=/engine=, not both: "
                "compute holds them all."
            )
        with pytest.raises(TypeError) as e:
            build(compute="cpu")
        assert str(e.value) == (
            "compute must be a fedp13n.utils.device.Compute (Compute.resolve(...)), got str."
        )


# -- builders: compute= is the keywords, bit for bit --------------------------------------------
def _fedavg_rounds(**compute_kwargs):
    datasets = make_clients([13, 0, 7, 21, 4], seed=4)
    cd = ClientData.from_clients((f"c{i}", d.x, d.y) for i, d in enumerate(datasets))
    process = build_weighted_fed_avg(
        small_cnn,
        functools.partial(torch.optim.SGD, lr=0.1),
        client_epochs=1,
        batch_size=5,
        seed=3,
        **compute_kwargs,
    )
    state = process.initialize()
    losses = []
    for _ in range(2):
        state, metrics = process.next(state, ClientSelection(cd, list(cd.client_ids)))
        losses.append(metrics.loss)
    return process, state.model, losses


def test_fed_avg_given_compute_equals_the_keywords():
    p1, w1, l1 = _fedavg_rounds(device="cpu", precision="fp32", deterministic=True)
    p2, w2, l2 = _fedavg_rounds(compute=Compute.resolve("cpu", "fp32", True))
    assert p1.client_work.compute == p2.client_work.compute == Compute("cpu", "fp32", True)
    assert l1 == l2 and all(torch.equal(w1[k], w2[k]) for k in w1)
    engine = MultiClientEngine(small_cnn, max_clients=3)
    p3, w3, l3 = _fedavg_rounds(engine=engine)
    p4, w4, l4 = _fedavg_rounds(compute=Compute.resolve(engine=engine))
    assert p3.engine is engine and p4.engine is engine
    assert l3 == l4 and all(torch.equal(w3[k], w4[k]) for k in w3)
    # the engine computes what the per-client path computes, up to float rounding
    assert max(float((w1[k] - w3[k]).abs().max()) for k in w1) < 1e-4


def _p13n(**compute_kwargs):
    trains, tests = make_clients([9, 14, 0, 5], seed=7), make_clients([6, 3, 4, 0], seed=8)
    inputs = [
        {"client_id": f"c{i}", "train_data": tr, "test_data": te}
        for i, (tr, te) in enumerate(zip(trains, tests, strict=True))
    ]
    sgd = functools.partial(torch.optim.SGD, lr=0.05)
    fns = {"sgd": functools.partial(build_personalize_fn, sgd, 4, 2, 1)}
    p13n = build_personalization_eval(small_cnn, fns, evaluate_fn, 10, seed=5, **compute_kwargs)
    return p13n(global_weights(small_cnn), inputs).to_dict()


def test_personalization_eval_given_compute_equals_the_keywords():
    plain = _p13n(device="cpu", precision="fp32")
    assert _p13n(compute=Compute.resolve("cpu", "fp32")) == plain
    engine = MultiClientEngine(small_cnn)
    batched = _p13n(engine=engine)
    assert _p13n(compute=Compute.resolve(engine=engine)) == batched
    assert batched["client_ids"] == plain["client_ids"] == ["c0", "c1", "c2", "c3"]
