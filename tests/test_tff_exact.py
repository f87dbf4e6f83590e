"""Issue 10: where TFF is the reference, fedp13n does what TFF does (TFF 0.87's
``personalization_eval_test.py``, ``p13n_utils_test.py``, the EMNIST client pipeline).

Hand example for the pipelines (1 feature x = 1, y = w, mean squared error, w0 = 0, client
SGD lr 0.25, so a step on a batch with mean label m is w <- w / 2 + m / 2; server SGD lr 1):
client A has labels (1, 2, 3), client B (2, 4); 2 epochs, batches of 2.

* ``"tff"`` (repeat(2).batch(2)): A steps [0,1] [2,0] [1,2] (means 1.5, 2, 2.5):
  w = 0.75, 1.375, 1.9375, weight 6 examples; B steps [0,1] [0,1]: w = 1.5, 2.25, weight 4.
  Global: (6 * 1.9375 + 4 * 2.25) / 10 = 2.0625.
* ``"epochs"``: A steps [0,1] [2] [0,1] [2]: w = 0.75, 1.875, 1.6875, 2.34375, weight 3;
  B as above, weight 2. Global: (3 * 2.34375 + 2 * 2.25) / 5 = 2.30625.
* ``"tff"`` with max_steps=1: A [0,1] -> 0.75, B [0,1] -> 1.5, both weight 2: 1.125.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import Counter, OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedp13n.algorithms import build_weighted_fed_avg
from fedp13n.data import ClientDataset
from fedp13n.data.pipeline import batch_plan, tf_shuffle_order
from fedp13n.models import InputSpec, emnist_conv_dropout, fedavg_cnn
from fedp13n.personalization import (
    PersonalizationResult,
    build_evaluate_fn,
    build_personalization_eval,
    build_personalize_fn,
    evaluate_fn,
)
from fedp13n.personalization.inputs import check_fits_model
from fedp13n.utils.seeding import derive_rng

MSE_EVAL = build_evaluate_fn(loss_fn=F.mse_loss)
ZERO = {"weight": torch.zeros(1, 2)}
SPEC_2_TO_1 = InputSpec(x_shape=(2,), y_shape=(1,), y_dtype=torch.float32)


def ds(x, y) -> ClientDataset:
    return ClientDataset(np.asarray(x, np.float32), np.asarray(y, np.float32))


def linear_fn() -> nn.Module:
    """TFF's test model: a 2-feature linear regression, with its input spec declared."""
    model = nn.Linear(2, 1, bias=False)
    model.input_spec = SPEC_2_TO_1
    return model


def plain_linear_fn() -> nn.Module:
    return nn.Linear(2, 1, bias=False)


CLIENT = {
    "client_id": "A",
    "train_data": ds([[1, 0], [0, 1]], [[1], [2]]),
    "test_data": ds([[1, 1]], [[3]]),
}


def sgd_strategy(epochs=2):
    return functools.partial(
        build_personalize_fn,
        functools.partial(torch.optim.SGD, lr=0.5),
        2,
        epochs,
        1,
        False,
        loss_fn=F.mse_loss,
    )


def sizes_3arg():
    """TFF's current strategy signature: no context."""

    def personalize(model, train_data, test_data):
        return OrderedDict(train=len(train_data), test=len(test_data))

    return personalize


# -- the "tff" client pipeline ------------------------------------------------------------------
def test_tff_pipeline_batches_run_across_epoch_boundaries():
    assert [b.tolist() for b in batch_plan(3, 2, epochs=2, pipeline="tff")] == [
        [0, 1],
        [2, 0],
        [1, 2],
    ]
    # epochs: every pass is cut separately; the last batch of each pass is short
    assert [b.tolist() for b in batch_plan(3, 2, epochs=2)] == [[0, 1], [2], [0, 1], [2]]
    for n, e, b in [(5, 3, 2), (7, 1, 3), (4, 2, 4), (1, 5, 3), (10, 2, 20)]:
        tff = batch_plan(n, b, epochs=e, pipeline="tff")
        assert len(tff) == math.ceil(n * e / b)
        assert [len(s) for s in tff[:-1]] == [b] * (len(tff) - 1)  # only the last is partial
        assert np.concatenate(tff).tolist() == [i % n for i in range(n * e)]
        assert len(batch_plan(n, b, epochs=e)) == e * math.ceil(n / b)


def test_max_steps_is_take_after_batching():
    tff = functools.partial(batch_plan, 3, 2, pipeline="tff")
    assert [b.tolist() for b in tff(epochs=2, max_steps=2)] == [[0, 1], [2, 0]]
    assert [b.tolist() for b in tff(epochs=2, max_steps=10)] == [[0, 1], [2, 0], [1, 2]]
    # unbounded repeat: exactly K full batches
    assert [b.tolist() for b in tff(epochs=None, max_steps=4)] == [[0, 1], [2, 0], [1, 2], [0, 1]]
    ep = functools.partial(batch_plan, 3, 2, pipeline="epochs")
    assert [b.tolist() for b in ep(epochs=None, max_steps=3)] == [[0, 1], [2], [0, 1]]
    assert [b.tolist() for b in ep(epochs=1, max_steps=3)] == [[0, 1], [2]]
    assert batch_plan(0, 2, epochs=None, max_steps=3, pipeline="tff") == []  # empty: no steps
    # shuffled and unbounded: K batches of examples of the client, each full
    plan = batch_plan(
        5, 4, epochs=None, max_steps=6, pipeline="tff", shuffle=True,
        generator=np.random.default_rng(0), shuffle_buffer=3,
    )  # fmt: skip
    assert [len(b) for b in plan] == [4] * 6
    assert set(np.concatenate(plan).tolist()) <= set(range(5))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pipeline": "keras"}, "pipeline must be one of"),
        ({"epochs": None}, "give max_steps"),
        ({"max_steps": 0}, "max_steps must be a positive integer"),
        ({"pipeline": "tff", "shuffle_buffer": 0}, "shuffle_buffer must be a positive integer"),
        ({"shuffle": True}, "needs a numpy Generator"),
        ({"epochs": 0}, "epochs must be a positive integer"),
    ],
)
def test_batch_plan_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        batch_plan(3, 2, **kwargs)


# -- tf.data's shuffle buffer --------------------------------------------------------------------
class FixedUniforms:
    """A stand-in generator that hands out chosen uniforms (for a hand trace)."""

    def __init__(self, values):
        self.values = list(values)

    def random(self, n):
        out, self.values = self.values[:n], self.values[n:]
        return np.array(out)


def test_shuffle_buffer_hand_trace():
    # stream 0..4, buffer 2, slots floor(u * size):
    # [0,1] u .7 -> slot 1: emit 1, refill 2 -> [0,2]; u .2 -> slot 0: emit 0 -> [3,2];
    # u .9 -> slot 1: emit 2 -> [3,4]; stream done: u .4 of 2 -> slot 0: emit 3, last (4)
    # fills the slot -> [4]; u .1 -> emit 4.
    out = tf_shuffle_order(5, 2, FixedUniforms([0.7, 0.2, 0.9, 0.4, 0.1]))
    assert out.tolist() == [1, 0, 2, 3, 4]


def reference_shuffle(num_elements, buffer_size, rng):
    """Plain re-implementation of the documented algorithm, one element at a time."""
    stream = iter(range(num_elements))
    buffer = list(itertools.islice(stream, buffer_size))
    u = rng.random(num_elements)
    out = []
    for t in range(num_elements):
        slot = int(u[t] * len(buffer))
        out.append(buffer[slot])
        nxt = next(stream, None)
        if nxt is not None:
            buffer[slot] = nxt
        else:
            buffer[slot] = buffer[-1]
            buffer.pop()
    return out


@pytest.mark.parametrize(("n", "buffer"), [(9, 4), (12, 1), (7, 7), (6, 100), (30, 10)])
def test_shuffle_matches_a_plain_reimplementation(n, buffer):
    got = tf_shuffle_order(n, buffer, np.random.default_rng(42))
    assert got.tolist() == reference_shuffle(n, buffer, np.random.default_rng(42))


def test_shuffle_buffer_one_is_the_identity():
    assert tf_shuffle_order(10, 1, np.random.default_rng(3)).tolist() == list(range(10))
    plan = batch_plan(
        3, 2, epochs=2, pipeline="tff", shuffle=True, generator=np.random.default_rng(0),
        shuffle_buffer=1,
    )  # fmt: skip
    assert [b.tolist() for b in plan] == [[0, 1], [2, 0], [1, 2]]


def test_shuffle_never_loses_or_repeats_and_respects_the_buffer():
    rng = np.random.default_rng(7)
    for _ in range(200):
        n, buffer = int(rng.integers(1, 40)), int(rng.integers(1, 50))
        out = tf_shuffle_order(n, buffer, rng)
        assert sorted(out.tolist()) == list(range(n))
        # element p enters the buffer after p - buffer + 1 outputs: it cannot come out sooner
        where = np.argsort(out)
        assert all(where[p] >= p - buffer + 1 for p in range(n))


def test_a_buffer_as_large_as_the_data_gives_a_uniform_permutation():
    trials = 4800
    counts = Counter(
        tuple(tf_shuffle_order(4, 1000, derive_rng(s, "shuffle-test")).tolist())
        for s in range(trials)
    )
    assert len(counts) == 24  # every permutation of 4 elements ...
    assert all(abs(c - trials / 24) < 0.3 * trials / 24 for c in counts.values())  # ... as often
    # the repeated data of the tff pipeline: 2 examples, 2 epochs, buffer >= 4
    plans = Counter()
    for s in range(1200):
        plan = batch_plan(
            2, 4, epochs=2, pipeline="tff", shuffle=True,
            generator=derive_rng(s, "shuffle-test"), shuffle_buffer=4,
        )  # fmt: skip
        assert len(plan) == 1 and sorted(plan[0].tolist()) == [0, 0, 1, 1]
        plans[tuple(plan[0].tolist())] += 1
    # 24 equally likely stream orders -> 6 distinct label sequences, 4 orders each
    assert len(plans) == 6
    assert all(abs(c - 200) < 60 for c in plans.values())


# -- FedAvg with the tff pipeline: a hand-computed two-client round ----------------------------
def ones_model() -> nn.Module:
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    return model


def hand_clients():
    def client(labels):
        y = np.asarray(labels, np.float32)[:, None]
        return ClientDataset(np.ones_like(y), y)

    return [client([1, 2, 3]), client([2, 4])]


def one_round(**kwargs):
    process = build_weighted_fed_avg(
        ones_model,
        lambda p: torch.optim.SGD(p, lr=0.25),
        lambda p: torch.optim.SGD(p, lr=1.0),
        loss_fn=F.mse_loss,
        metrics_fn=lambda out, y: F.mse_loss(out, y),
        batch_size=2,
        shuffle=False,
        **kwargs,
    )
    state, metrics = process.next(process.initialize(), hand_clients())
    return float(state.model["weight"]), metrics


def test_fedavg_tff_pipeline_by_hand():
    w, m = one_round(client_epochs=2, client_pipeline="tff")
    assert w == 2.0625
    assert m.num_examples == 6 + 4  # processed: 3 steps for A (6 examples), 2 for B (4)
    w_epochs, m_epochs = one_round(client_epochs=2, client_pipeline="epochs")
    assert w_epochs == pytest.approx(2.30625, rel=1e-6)
    assert m_epochs.num_examples == 6 + 4
    # K local steps, not epochs: every client processed 2 examples, so equal weights
    assert one_round(client_epochs=None, max_steps=1, client_pipeline="tff")[0] == 1.125
    assert one_round(client_epochs=2, max_steps=1, client_pipeline="tff")[0] == 1.125
    # unbounded repeat and 3 steps is A's 2-epoch plan; B: [0,1] [0,1] [0,1] -> 2.625
    w3, _ = one_round(client_epochs=None, max_steps=3, client_pipeline="tff")
    assert w3 == pytest.approx((6 * 1.9375 + 6 * 2.625) / 12)


def numpy_client(w, x, y, plan, lr):
    """Plain-loop oracle: mini-batch SGD on the MSE of y = x.w along a batch plan."""
    w = w.astype(np.float64).copy()
    for idx in plan:
        xb, yb = x[idx].astype(np.float64), y[idx, 0].astype(np.float64)
        w -= lr * 2.0 / len(idx) * xb.T @ (xb @ w - yb)
    return w


@pytest.mark.parametrize("shuffle", [False, True])
def test_fedavg_tff_pipeline_matches_a_numpy_oracle(shuffle):
    rng = np.random.default_rng(3)
    true_w = np.array([1.0, -2.0])
    clients = []
    for n in (5, 3):
        x = rng.normal(size=(n, 2)).astype(np.float32)
        clients.append(ClientDataset(x, (x @ true_w)[:, None].astype(np.float32)))
    process = build_weighted_fed_avg(
        plain_linear_fn,
        lambda p: torch.optim.SGD(p, lr=0.1),
        lambda p: torch.optim.SGD(p, lr=1.0),
        loss_fn=F.mse_loss,
        metrics_fn=lambda out, y: F.mse_loss(out, y),
        client_epochs=3,
        batch_size=2,
        shuffle=shuffle,
        client_pipeline="tff",
        shuffle_buffer=4,
        seed=5,
    )
    state0 = process.initialize()
    state1, m = process.next(state0, clients)
    w0 = state0.model["weight"].numpy()[0]
    trained, weights = [], []
    for key, c in enumerate(clients):
        plan = batch_plan(
            len(c), 2, epochs=3, pipeline="tff", shuffle=shuffle, shuffle_buffer=4,
            generator=derive_rng(5, "fedavg-shuffle", 1, key),
        )  # fmt: skip
        if not shuffle:  # by hand: ceil(n * 3 / 2) steps across epoch boundaries
            assert len(plan) == math.ceil(len(c) * 3 / 2)
        trained.append(numpy_client(w0, c.x, c.y, plan, 0.1))
        weights.append(sum(len(i) for i in plan))
    expected = sum(k * w for k, w in zip(weights, trained, strict=True)) / sum(weights)
    np.testing.assert_allclose(state1.model["weight"].numpy()[0], expected, rtol=1e-5)
    assert m.num_examples == sum(weights) == 15 + 9


# -- personalization: build-time model_fn, exact keys, the data check ---------------------------
def test_model_fn_is_called_and_checked_at_build_time():
    calls = []

    def counting():
        calls.append(1)
        return linear_fn()

    build_personalization_eval(counting, {"s": sizes_3arg}, MSE_EVAL, seed=0)
    assert calls == [1]  # built once, before any client input exists
    with pytest.raises(TypeError, match=r"model_fn\(\) returned a str, not a torch nn.Module"):
        build_personalization_eval(lambda: "a model", {"s": sizes_3arg}, MSE_EVAL, seed=0)
    with pytest.raises(TypeError, match="model_fn is a Linear instance; pass a no-argument"):
        build_personalization_eval(linear_fn(), {"s": sizes_3arg}, MSE_EVAL, seed=0)
    with pytest.raises(TypeError, match="model_fn must be a no-argument callable"):
        build_personalization_eval(None, {"s": sizes_3arg}, MSE_EVAL, seed=0)

    def bad_spec():
        model = plain_linear_fn()
        model.input_spec = ((2,), (1,))
        return model

    with pytest.raises(TypeError, match="input_spec is a tuple; it must be a fedp13n.models"):
        build_personalization_eval(bad_spec, {"s": sizes_3arg}, MSE_EVAL, seed=0)


@pytest.mark.parametrize(
    ("client_input", "match"),
    [
        ({"train_data": CLIENT["train_data"]}, "has no 'test_data'"),
        ({"test_data": CLIENT["test_data"]}, "has no 'train_data'"),
        ({**CLIENT, "weights": 1}, r"unknown keys \['weights'\]; allowed are"),
    ],
)
def test_client_inputs_need_exactly_the_expected_keys(client_input, match):
    p13n_eval = build_personalization_eval(linear_fn, {"s": sizes_3arg}, MSE_EVAL, seed=0)
    with pytest.raises(TypeError, match=match):
        p13n_eval(ZERO, [client_input])


def test_context_and_client_id_stay_optional_keys():
    p13n_eval = build_personalization_eval(linear_fn, {"s": sizes_3arg}, MSE_EVAL, seed=0)
    bare = {"train_data": CLIENT["train_data"], "test_data": CLIENT["test_data"]}
    assert p13n_eval(ZERO, [bare]).client_ids == ("0",)
    result = p13n_eval(ZERO, [{**bare, "client_id": "x", "context": {"k": 1}}])
    assert result.client_ids == ("x",)
    assert result["s"] == {"train": [2], "test": [1]}


def test_already_batched_data_is_refused_against_the_input_spec():
    # x (n, 1, 2) for a 2-feature model, y (n, 1, 1): one extra leading axis
    batched = {
        "train_data": ds([[[1, 0]], [[0, 1]]], [[[1]], [[2]]]),
        "test_data": CLIENT["test_data"],
    }
    p13n_eval = build_personalization_eval(linear_fn, {"sgd": sgd_strategy()}, MSE_EVAL, seed=0)
    with pytest.raises(
        TypeError,
        match=r"train_data of client '0' \(x \(2, 1, 2\), y \(2, 1, 1\)\) does not fit the "
        r"model's input_spec: it has features of shape \(1, 2\) per example, the model expects "
        r"\(2,\); pass unbatched examples: x of shape \(n, 2\), y of shape \(n, 1\)",
    ):
        p13n_eval(ZERO, [batched])
    labels_only = {**CLIENT, "test_data": ds([[1, 1]], [[[3]]])}
    with pytest.raises(TypeError, match=r"labels of shape \(1, 1\) per example, .* \(1,\)"):
        p13n_eval(ZERO, [labels_only])
    int_labels = {
        **CLIENT,
        "test_data": ClientDataset(np.ones((1, 2), np.float32), np.ones((1, 1))),
    }
    p13n_eval(ZERO, [int_labels])  # float64 labels become float32: they fit
    int_labels = {
        **CLIENT,
        "test_data": ClientDataset(np.ones((1, 2), np.float32), np.ones((1, 1), int)),
    }
    with pytest.raises(
        TypeError, match="labels of dtype torch.int64, the model expects torch.float32"
    ):
        p13n_eval(ZERO, [int_labels])


def test_without_an_input_spec_a_dry_forward_checks_what_it_can():
    p13n_eval = build_personalization_eval(
        plain_linear_fn, {"sgd": sgd_strategy()}, MSE_EVAL, seed=0
    )
    three_features = {**CLIENT, "train_data": ds(np.ones((2, 3)), np.ones((2, 1)))}
    with pytest.raises(
        TypeError, match=r"forward pass of one example \(features of shape \(3,\)\)"
    ):
        p13n_eval(ZERO, [three_features])
    # labels (n,) against outputs (n, 1): mse_loss would broadcast to (n, n)
    flat_labels = {**CLIENT, "test_data": ds([[1, 1], [1, 0]], [3, 1])}
    with pytest.raises(
        TypeError, match=r"labels of shape \(\) per example but the model outputs \(1,\)"
    ):
        p13n_eval(ZERO, [flat_labels])
    # what a dry forward cannot see: nn.Linear takes (n, 1, 2) as well; only a spec can tell
    batched = {"train_data": ds([[[1, 0]]], [[[1]]]), "test_data": ds([[[1, 1]]], [[[3]]])}
    assert p13n_eval(ZERO, [batched])["baseline_metrics"]["loss"] == [9.0]


def test_emnist_models_declare_their_input_spec():
    for model in (emnist_conv_dropout(), fedavg_cnn(10)):
        spec = model.input_spec
        assert (spec.x_shape, spec.y_shape, spec.x_dtype, spec.y_dtype) == (
            (28, 28), (), torch.float32, torch.int64,
        )  # fmt: skip
        pixels = np.zeros((3, 28, 28), np.uint8)
        check_fits_model(model, ClientDataset(pixels, np.zeros(3, np.int32)), "d")  # fits
        check_fits_model(model, ClientDataset(pixels[:, None], np.zeros(3, np.int64)), "d")
        with pytest.raises(
            TypeError, match=r"\(20, 28, 28\) per example.*\(28, 28\) or \(1, 28, 28\)"
        ):
            check_fits_model(
                model, ClientDataset(np.zeros((3, 20, 28, 28)), np.zeros((3, 20))), "d"
            )
        with pytest.raises(TypeError, match="labels of dtype torch.float32"):
            check_fits_model(model, ClientDataset(pixels, np.zeros(3, np.float32)), "d")


# -- no clients ---------------------------------------------------------------------------------
def test_no_clients_give_the_structure_with_empty_lists():
    def raising_on_empty():
        return lambda model, train, test, context=None: {"n": len(train)}

    p13n_eval = build_personalization_eval(
        linear_fn,
        {"sgd": sgd_strategy(), "sizes": sizes_3arg, "n": raising_on_empty},
        MSE_EVAL,
        seed=4,
    )
    empty = p13n_eval(ZERO, [])
    metrics = {"num_test_examples": [], "loss": [], "num_examples": [], "num_batches": []}
    assert isinstance(empty, PersonalizationResult)
    assert empty == {
        "baseline_metrics": metrics,
        "sgd": {"epoch_1": metrics, "epoch_2": metrics, "num_train_examples": []},
        "sizes": {"train": [], "test": []},
        "n": {"n": []},
    }
    assert empty.client_ids == () and empty.seed == 4
    # the same structure as with clients
    full = p13n_eval(ZERO, [CLIENT])
    assert _structure(full) == _structure(empty)
    assert empty.to_dict()["client_ids"] == [] and empty.to_dict()["sgd"]["epoch_2"]["loss"] == []
    assert PersonalizationResult.from_dict(empty.to_dict()) == empty


def _structure(tree):
    if isinstance(tree, dict):
        return {k: _structure(v) for k, v in tree.items()}
    return None


def test_no_clients_with_a_classifier_include_the_accuracies():
    def classifier():
        model = nn.Linear(2, 3, bias=False)
        model.input_spec = InputSpec(x_shape=(2,))  # int64 scalar labels by default
        return model

    result = build_personalization_eval(classifier, {}, evaluate_fn, seed=0)(
        {"weight": torch.zeros(3, 2)}, []
    )
    assert list(result) == ["baseline_metrics"]
    assert list(result["baseline_metrics"]) == [
        "num_test_examples",
        "loss",
        "accuracy",
        "sparse_categorical_accuracy",
        "num_examples",
        "num_batches",
    ]
    assert all(v == [] for v in result["baseline_metrics"].values())


def test_no_clients_without_an_input_spec_give_every_key_an_empty_mapping():
    result = build_personalization_eval(
        plain_linear_fn, {"sgd": sgd_strategy(), "sizes": sizes_3arg}, MSE_EVAL, seed=0
    )(ZERO, [])
    assert result == {"baseline_metrics": {}, "sgd": {}, "sizes": {}}
    assert result.client_ids == ()


def test_no_clients_never_hand_user_code_an_empty_client():
    """Issue 17: TFF returns the structure with empty lists for no clients even when the
    user's functions divide by the number of examples; fedp13n derives the structure from a
    dry run on a one-example client of the input spec, never from an empty one."""
    seen = []

    def per_example_eval(model, data):
        seen.append(len(data))
        return {"loss_per_example": 1.0 / len(data), "n": {"examples": len(data)}}

    def divides():
        def strategy(model, train, test):
            seen.append((len(train), len(test)))
            return {"ratio": len(test) / len(train)}

        return strategy

    p13n_eval = build_personalization_eval(linear_fn, {"d": divides}, per_example_eval, seed=0)
    empty = p13n_eval(ZERO, [])
    assert empty == {
        "baseline_metrics": {"loss_per_example": [], "n": {"examples": []}},
        "d": {"ratio": []},
    }
    assert empty.client_ids == () and empty.seed == 0
    assert 0 not in seen and (0, 0) not in seen
    assert seen == [1, (1, 1)]
    # derived once, then kept: a second call runs no user code
    again = p13n_eval(ZERO, [])
    assert again == empty and seen == [1, (1, 1)]
    again["d"]["ratio"].append(1.0)  # the caller owns its copy
    assert p13n_eval(ZERO, [])["d"]["ratio"] == []


def test_no_clients_and_a_strategy_that_fails_on_one_example():
    def needs_two():
        def strategy(model, train, test):
            if len(train) < 2:
                raise IndexError("needs two examples")
            return {"x": 1.0}

        return strategy

    p13n_eval = build_personalization_eval(linear_fn, {"d": needs_two}, MSE_EVAL, seed=0)
    with pytest.raises(IndexError) as info:
        p13n_eval(ZERO, [])
    assert any("derived from a dry run on a one-example client" in n for n in info.value.__notes__)


# -- strategy signatures ------------------------------------------------------------------------
def test_three_argument_strategies_work_beside_context_ones():
    seen = []

    def with_context():
        def personalize(model, train_data, test_data, context):
            seen.append(context)
            return {"scaled": context * len(train_data)}

        return personalize

    p13n_eval = build_personalization_eval(
        linear_fn,
        {"tff": sizes_3arg, "ctx": with_context, "sgd": sgd_strategy(epochs=1)},
        MSE_EVAL,
        seed=0,
    )
    result = p13n_eval(ZERO, [{**CLIENT, "context": 10}])
    assert result["tff"] == {"train": [2], "test": [1]}
    assert result["ctx"] == {"scaled": [20]}
    assert seen == [10]
    assert result["sgd"]["epoch_1"]["loss"] == [pytest.approx(2.25)]  # see test_p13n_utils


def test_strategy_signature_is_checked_once_at_build_time():
    builds = []

    def two_args():
        builds.append(1)
        return lambda model, train_data: {}

    with pytest.raises(TypeError, match=r"must take \(model, train_data, test_data\)"):
        build_personalization_eval(linear_fn, {"bad": two_args}, MSE_EVAL, seed=0)
    assert builds == [1]

    def star_args():
        return lambda *args: {"nargs": len(args)}

    result = build_personalization_eval(linear_fn, {"s": star_args}, MSE_EVAL, seed=0)(
        ZERO, [CLIENT]
    )
    assert result["s"] == {"nargs": [4]}  # *args accepts the context form


# -- evaluate_fn: TFF's EMNIST metric names --------------------------------------------------------
def test_evaluate_fn_reports_tff_names_in_the_evaluation():
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    x = np.array([[2, 0], [0, 3], [-1, -1], [1, 0.5]], np.float32)  # predicted 0, 1, 2, 0
    client = {"train_data": ClientDataset(x, np.array([0, 1, 2, 0])),
              "test_data": ClientDataset(x, np.array([0, 1, 2, 1]))}  # fmt: skip
    model_fn = functools.partial(nn.Linear, 2, 3, bias=False)
    small_batches = build_evaluate_fn(batch_size=3)
    result = build_personalization_eval(model_fn, {}, small_batches, seed=0)(
        {"weight": w}, [client]
    )
    base = result["baseline_metrics"]
    assert base["sparse_categorical_accuracy"] == base["accuracy"] == [0.75]
    assert base["num_examples"] == base["num_test_examples"] == [4]
    assert base["num_batches"] == [2]  # ceil(4 / 3)
