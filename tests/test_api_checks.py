"""Bad input to the library API: one-line errors naming the problem and the fix, raised
before any work, never a traceback from inside torch or numpy, never a silently wrong
result (found by an audit of the public API)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from fedp13n.algorithms import ClientSelection, build_weighted_fed_avg, sample_clients
from fedp13n.data import ClientData, ClientDataset
from fedp13n.engine import MultiClientEngine
from fedp13n.models import emnist_conv_dropout
from fedp13n.personalization import build_personalization_eval, build_personalize_fn, evaluate_fn
from fedp13n.utils.device import resolve_device

EMNIST = functools.partial(emnist_conv_dropout, num_classes=62)
DIGITS = functools.partial(emnist_conv_dropout, num_classes=10)


def _examples(n=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 62, n)


@pytest.fixture
def data():
    x, y = _examples()
    y[3] = 61  # the largest EMNIST-62 label is there
    return ClientData.from_clients([("f0", x, y), ("f1", x[:4], y[:4])])


def one_line(exc_info, *phrases):
    text = str(exc_info.value)
    assert "\n" not in text, text
    for p in phrases:
        assert p in text, text


# -- models and engines ---------------------------------------------------------------------------
def test_a_model_instance_instead_of_its_builder():
    for build in (build_weighted_fed_avg, MultiClientEngine):
        with pytest.raises(TypeError) as e:
            build(emnist_conv_dropout())
        one_line(e, "model_fn", "EmnistConvDropout", "functools.partial(emnist_conv_dropout")


def test_the_per_client_path_follows_the_engine_or_says_why_not():
    engine = MultiClientEngine(EMNIST)
    process = build_weighted_fed_avg(EMNIST, engine=engine)
    assert (process.client_work.compute.device, process.client_work.compute.precision) == (
        "cpu",
        "fp32",
    )
    with pytest.raises(ValueError) as e:
        build_weighted_fed_avg(EMNIST, engine=engine, precision="bf16")
    one_line(e, "precision='bf16' but the engine computes in fp32")
    with pytest.raises(ValueError) as e:
        build_personalization_eval(EMNIST, {}, evaluate_fn, engine=engine, precision="bf16")
    one_line(e, "leave precision out")


def test_the_engine_reads_mixed_feature_dtypes_as_the_per_client_path_does():
    """uint8 pixels (k/255) beside float pixels: each client's own values, not the first
    client's dtype forced on the others."""
    x, y = _examples(8)
    clients = [ClientDataset(x, y), ClientDataset((x / 255.0).astype(np.float32), y)]
    inputs = [
        {"client_id": f"c{i}", "train_data": d, "test_data": d} for i, d in enumerate(clients)
    ]
    sgd = functools.partial(torch.optim.SGD, lr=0.05)
    fns = {"sgd": functools.partial(build_personalize_fn, sgd, 4, 1, 1)}
    torch.manual_seed(0)
    weights = EMNIST().state_dict()
    per_client = build_personalization_eval(EMNIST, fns, evaluate_fn, seed=1)(weights, inputs)
    engine = MultiClientEngine(EMNIST)
    batched = build_personalization_eval(EMNIST, fns, evaluate_fn, seed=1, engine=engine)(
        weights, inputs
    )
    for key in ("baseline_metrics", "sgd"):
        a = per_client[key] if key == "baseline_metrics" else per_client[key]["epoch_1"]
        b = batched[key] if key == "baseline_metrics" else batched[key]["epoch_1"]
        assert np.allclose(a["loss"], b["loss"], atol=1e-5)
    # the same pixels: both clients see the same losses
    assert (
        abs(per_client["baseline_metrics"]["loss"][0] - per_client["baseline_metrics"]["loss"][1])
        < 1e-5
    )


# -- data that does not fit the model -------------------------------------------------------------
def test_labels_outside_the_models_classes(data):
    process = build_weighted_fed_avg(DIGITS)
    with pytest.raises(ValueError) as e:
        process.next(process.initialize(), ClientSelection(data, ["f0"]))
    one_line(e, "client 'f0': label 61 is outside the model's 10 classes (0..9)", "num_classes=62")
    p13n = build_personalization_eval(DIGITS, {}, evaluate_fn)
    inputs = [{"train_data": data.create_dataset("f0"), "test_data": data.create_dataset("f1")}]
    with pytest.raises(ValueError) as e:
        p13n(DIGITS().state_dict(), inputs)
    one_line(e, "label 61 is outside the model's 10 classes")
    # the labels fit a 62-class model: no error, the round runs
    fits = build_weighted_fed_avg(EMNIST)
    _, metrics = fits.next(fits.initialize(), ClientSelection(data, ["f0", "f1"]))
    assert metrics.num_examples == 14


def test_labels_of_the_wrong_shape_and_features_against_the_input_spec():
    x, y = _examples()
    process = build_weighted_fed_avg(EMNIST)
    state = process.initialize()
    with pytest.raises(ValueError) as e:
        process.next(state, [ClientDataset(x, y[:, None])])
    one_line(e, "class labels must be 1-D", "(10, 1)", "y.ravel()")
    with pytest.raises(TypeError) as e:
        process.next(state, [ClientDataset(x[..., None], y)])
    one_line(e, "client 0", "input_spec", "(28, 28, 1)")


def test_images_with_a_channel_axis_are_checked_like_plain_images():
    x, y = _examples()
    with pytest.raises(ValueError) as e:
        ClientDataset.from_arrays(x[:, None].astype(np.float32), y)  # 0..255 floats
    one_line(e, "divide them by 255")
    ClientDataset.from_arrays(x[:, None], y)  # uint8 with a channel axis is fine


# -- client selections ---------------------------------------------------------------------------
def test_a_client_selected_twice_or_a_string_of_ids(data):
    with pytest.raises(ValueError) as e:
        ClientSelection(data, ["f0", "f1", "f0"])
    one_line(e, "client id 'f0' is selected more than once")
    with pytest.raises(TypeError) as e:
        ClientSelection(data, "f0")
    one_line(e, "got the string 'f0'; use ['f0']")
    with pytest.raises(TypeError) as e:
        sample_clients("abc", 2, seed=0, round_num=1)
    one_line(e, "got the string 'abc'")


@pytest.mark.parametrize("seed", [1.7, "3", None, True])
def test_seeds_that_would_silently_become_other_seeds(seed):
    with pytest.raises(TypeError) as e:
        build_weighted_fed_avg(EMNIST, seed=seed)
    one_line(e, "seed must be an int")
    build_weighted_fed_avg(EMNIST, seed=np.int64(3))  # numpy integers are integers


def test_flags_must_be_booleans():
    with pytest.raises(TypeError) as e:
        build_weighted_fed_avg(EMNIST, shuffle="no")
    one_line(e, "shuffle must be True or False, got 'no'")
    with pytest.raises(TypeError):
        build_personalization_eval(EMNIST, {}, evaluate_fn, deterministic="no")
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    build_personalize_fn(sgd, np.int64(4), np.int64(2), 1)  # numpy integers are fine
    with pytest.raises(TypeError):
        build_personalize_fn(sgd, 4, 2, 1, shuffle="false")


# -- device names and example positions -----------------------------------------------------------
@pytest.mark.parametrize(
    "name,message",
    [("gpu", "unknown device 'gpu'"), ("cuda:", "invalid device 'cuda:'"),
     ("cuda:²", "invalid device"), (None, "device must be a string")],
)  # fmt: skip
def test_device_names_are_checked_everywhere(name, message):
    x, y = _examples(3)
    calls = [lambda: ClientDataset(x, y).to(name), lambda: resolve_device(name)]
    if name is not None:  # create_dataset's device=None means "no device copy"
        calls.append(lambda: ClientData.from_clients([("a", x, y)]).create_dataset("a", name))
    for call in calls:
        with pytest.raises(ValueError) as e:
            call()
        one_line(e, message)
    assert ClientDataset(x, y).to(" CPU ").device == torch.device("cpu")


def test_cuda_indices_are_normalised():
    if torch.cuda.is_available():
        assert resolve_device("cuda:00") == torch.device("cuda:0")
    else:
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda:00")


@pytest.mark.parametrize("resident", [False, True])
def test_example_positions_are_checked_the_same_way_on_every_path(resident):
    x, y = _examples(5)
    d = ClientDataset(x, np.arange(5))
    d = d.to("cpu") if resident else d
    mask = np.array([True, False, True, False, True])
    assert d.batch(mask)[1].tolist() == [0, 2, 4]  # a mask selects, it is not positions 0/1
    assert d.subset(mask).batch(slice(None))[1].tolist() == [0, 2, 4]
    assert d.batch(np.array([], dtype=np.int64))[1].tolist() == []
    for bad, phrase in (
        (np.array([7]), "example position 7 is out of range for a client with 5 examples"),
        (np.array([-1]), "example position -1 is out of range"),
        (np.array([0.5]), "must be integers"),
        (np.array([True, False]), "boolean mask over a client's examples needs shape (5,)"),
        (2, "must be a 1-D array"),
    ):
        with pytest.raises(IndexError) as e:
            d.batch(bad)
        one_line(e, phrase)


def test_one_device_copy_whatever_the_devices_name():
    x, y = _examples(3)
    cd = ClientData.from_clients([("a", x, y)])
    assert cd.on_device("cpu")[0] is cd.on_device(torch.device("cpu"))[0]
    assert len(cd._device_copies) == 1


@pytest.mark.parametrize(
    "settings,message",
    [({"momentum": float("inf")}, "momentum must be a number in [0, 1)"),
     ({"momentum": 1.5}, "momentum must be a number in [0, 1)"),
     ({"learning_rate": float("nan")}, "learning_rate must be a finite positive number")],
)  # fmt: skip
def test_optimizer_settings_that_would_train_on_nan(settings, message):
    from fedp13n.personalization.registry import build_strategy
    from fedp13n.utils.optimizers import make_optimizer_fn

    with pytest.raises(ValueError) as e:
        build_strategy("finetune", **settings)
    one_line(e, message)
    with pytest.raises(ValueError, match="beta2 must be a number in"):
        make_optimizer_fn("adam", 0.1, beta2=1.0)
    # one make_optimizer_fn (the registry's and the stages'): a rate is finite and > 0, as
    # the configuration's stage and strategy rates already had to be
    for rate in (float("inf"), 0.0):
        with pytest.raises(ValueError, match="learning_rate must be a finite positive number"):
            make_optimizer_fn("sgd", rate)
