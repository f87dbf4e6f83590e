"""The EMNIST models: TFF's layer shapes and parameter counts, input layouts, and a FedAvg
round on real EMNIST writers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedp13n.algorithms import ClientSelection, build_weighted_fed_avg
from fedp13n.data import ClientData
from fedp13n.models import (
    default_head,
    emnist_conv_bn,
    emnist_conv_dropout,
    emnist_dnn,
    emnist_dnn_bn,
    fedavg_cnn,
    get_model_fn,
)

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/data/femnist_sample"


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_conv_dropout_has_tff_parameter_count():
    # conv 3x3x1x32 + 32, conv 3x3x32x64 + 64, dense (12*12*64)x128 + 128, dense 128xC + C
    for classes in (62, 10):
        by_hand = (9 * 32 + 32) + (9 * 32 * 64 + 64) + (12 * 12 * 64 * 128 + 128)
        by_hand += 128 * classes + classes
        assert num_params(emnist_conv_dropout(classes)) == by_hand
    assert num_params(emnist_conv_dropout()) == 1_206_590  # TFF's model summary, 62 classes


def test_fedavg_cnn_has_the_papers_parameter_count():
    assert num_params(fedavg_cnn(10)) == 1_663_370  # McMahan et al. 2017, digits
    assert num_params(fedavg_cnn(62)) == 1_663_370 - (512 * 10 + 10) + (512 * 62 + 62)


def test_dnn_is_tffs_two_hidden_layer_model():
    # TFF 0.87 emnist_models.create_two_hidden_layer_model's summary, only_digits=True:
    # dense 157,000 + 40,200 + 2,010 = 199,210 parameters.
    assert num_params(emnist_dnn(10)) == 199_210
    assert num_params(emnist_dnn(62)) == 784 * 200 + 200 + 200 * 200 + 200 + 200 * 62 + 62
    assert num_params(emnist_dnn_bn(62)) == num_params(emnist_dnn(62)) + 2 * (2 * 200)
    assert get_model_fn("dnn") is emnist_dnn and get_model_fn("dnn_bn") is emnist_dnn_bn
    torch.manual_seed(0)
    model = emnist_dnn(62)
    x = torch.rand(3, 28, 28)
    w = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    h = np.maximum(x.double().reshape(3, 784).numpy() @ w["fc1.weight"].T + w["fc1.bias"], 0)
    h = np.maximum(h @ w["fc2.weight"].T + w["fc2.bias"], 0)
    by_hand = h @ w["fc3.weight"].T + w["fc3.bias"]  # logits (TFF's softmax is in the loss)
    np.testing.assert_allclose(model(x).detach().numpy(), by_hand, atol=1e-5)


@pytest.mark.parametrize(
    "build, head", [(emnist_conv_dropout, "fc2"), (emnist_conv_bn, "fc2"), (emnist_dnn, "fc3"),
                    (emnist_dnn_bn, "fc3")],
)  # fmt: skip
def test_the_head_is_the_last_dense_layer_not_a_batch_norm(build, head):
    # FedPer's personal head and head-only fine-tuning take the model's last layer: the
    # batch-norm models register their norms in forward order, so it is the classifier.
    assert default_head(build(62)) == head


@pytest.mark.parametrize("build", [emnist_conv_dropout, fedavg_cnn, emnist_dnn, emnist_dnn_bn])
def test_models_accept_both_image_layouts_and_reject_others(build):
    torch.manual_seed(0)
    model = build(62).eval()
    x = torch.rand(5, 28, 28)
    out = model(x)
    assert out.shape == (5, 62)
    assert torch.equal(out, model(x.unsqueeze(1)))
    with pytest.raises(ValueError, match=r"\(B, 28, 28\)"):
        model(torch.rand(5, 3, 28, 28))


def test_dropout_is_active_only_in_training_mode():
    torch.manual_seed(0)
    model = emnist_conv_dropout()
    x = torch.rand(4, 28, 28)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_model_registry():
    assert get_model_fn("fedavg_cnn") is fedavg_cnn
    assert get_model_fn("conv_dropout") is emnist_conv_dropout
    with pytest.raises(ValueError, match="'conv_dropout', 'dnn', 'dnn_bn', 'fedavg_cnn'"):
        get_model_fn("resnet")
    with pytest.raises(ValueError, match="num_classes"):
        emnist_conv_dropout(1)


def test_one_fedavg_round_on_real_emnist_writers():
    h5py = pytest.importorskip("h5py")
    train = SAMPLE / "fed_emnist_train.h5"
    if not train.is_file():
        pytest.skip(f"real EMNIST sample not found at {SAMPLE}")
    with h5py.File(train, "r") as f:
        ids = sorted(f["examples"])[:3]
        clients = [(c, f["examples"][c]["pixels"][()], f["examples"][c]["label"][()]) for c in ids]
    cd = ClientData.from_clients(clients)
    process = build_weighted_fed_avg(emnist_conv_dropout, seed=0)
    state, m = process.next(process.initialize(), ClientSelection(cd, ids))
    assert m.num_examples == cd.num_examples and m.num_clients == 3
    # An untrained 62-way classifier starts near chance: loss about ln 62.
    assert abs(m.loss - math.log(62)) < 0.3
    assert 0.0 <= m.accuracy < 0.2
    w = process.get_model_weights(state)
    assert all(np.isfinite(v.numpy()).all() for v in w.values())


@pytest.mark.parametrize("builder", [emnist_conv_dropout, fedavg_cnn])
def test_keras_glorot_uniform_initialisation(builder):
    # Keras: kernels U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), biases zero.
    torch.manual_seed(0)
    model = builder(num_classes=62)
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            continue
        w = module.weight.detach()
        receptive = w[0, 0].numel() if w.dim() == 4 else 1
        fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        assert torch.count_nonzero(module.bias) == 0, name
        assert w.abs().max() <= limit, name
        # uniform on [-a, a] has standard deviation a / sqrt(3)
        assert w.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.1), name
