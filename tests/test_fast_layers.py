"""FastDropout's statistics and gradients, and the optimized EMNIST model against a plain
PyTorch reference of the Keras layer order (ReLU before pooling, NCHW, explicit masks)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedp13n.models import emnist_conv_dropout, fedavg_cnn
from fedp13n.models.layers import FastDropout, fast_dropout, keep_mask, random_bytes


def test_random_bytes_are_uniform_in_every_position_of_the_word():
    torch.manual_seed(0)
    n = 7 * 200_000
    b = random_bytes(n).long()
    assert b.dtype == torch.int64 and b.shape == (n,)
    # Each of the 7 bytes taken from a 64-bit word must be uniform on 0..255: the 8th
    # (top) byte of int64 random_() only reaches 127, and would show up here.
    per_position = b.view(-1, 7)
    for pos in range(7):
        col = per_position[:, pos].double()
        assert col.max() == 255 and col.min() == 0
        assert abs(col.mean().item() - 127.5) < 5 * 73.9 / math.sqrt(len(col))
        assert abs((col >= 128).double().mean().item() - 0.5) < 5 * 0.5 / math.sqrt(len(col))


@pytest.mark.parametrize("p", [0.25, 0.5, 0.75, 3 / 256])
def test_keep_rate_and_scale_are_those_of_inverted_dropout(p):
    torch.manual_seed(1)
    x = torch.full((1000, 1000), 2.0)
    y = fast_dropout(x, p, training=True)
    kept = y != 0
    rate = kept.double().mean().item()
    sigma = math.sqrt(p * (1 - p) / x.numel())
    assert abs(rate - (1 - p)) < 5 * sigma
    # kept values are scaled by exactly 1 / (1 - p), so the expectation is x
    assert torch.all(y[kept] == torch.tensor(2.0) * (1.0 / (1.0 - p)))
    assert abs(y.double().mean().item() - 2.0) < 5 * 2.0 * sigma / (1 - p)


def test_masks_are_deterministic_from_the_torch_seed_and_independent_of_each_other():
    torch.manual_seed(7)
    a = keep_mask((64, 64), 0.5)
    b = keep_mask((64, 64), 0.5)
    torch.manual_seed(7)
    assert torch.equal(keep_mask((64, 64), 0.5), a)
    assert not torch.equal(a, b)  # consecutive draws differ
    # independent: P(both kept) = 1/4
    both = (a & b).double().mean().item()
    assert abs(both - 0.25) < 5 * math.sqrt(0.25 * 0.75 / a.numel())


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(3)
    x = torch.randn(50, 30, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(11)
    y = fast_dropout(x, 0.25)
    torch.manual_seed(11)
    mask = keep_mask(x.shape, 0.25)
    assert torch.equal(y, torch.where(mask, x * (1.0 / 0.75), torch.zeros_like(x)))
    g = torch.randn_like(x)
    y.backward(g)
    assert torch.allclose(x.grad, torch.where(mask, g / 0.75, torch.zeros_like(g)))

    def fixed_mask_dropout(t: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(11)
        return fast_dropout(t, 0.25)

    assert torch.autograd.gradcheck(fixed_mask_dropout, (x.detach().requires_grad_(),))


def test_edge_probabilities_eval_mode_and_bad_p():
    x = torch.rand(4, 5)
    assert fast_dropout(x, 0.0) is x
    assert torch.equal(fast_dropout(x, 1.0), torch.zeros_like(x))
    layer = FastDropout(0.5).eval()
    assert layer(x) is x
    torch.manual_seed(0)
    y = fast_dropout(torch.ones(100_000), 0.3)  # not a multiple of 1/256: F.dropout's way
    assert abs((y != 0).double().mean().item() - 0.7) < 0.01
    with pytest.raises(ValueError, match="between 0 and 1"):
        FastDropout(1.5)
    with pytest.raises(ValueError, match="multiple of 1/256"):
        keep_mask((3,), 0.3)


def _reference_conv_dropout(model: nn.Module, x: torch.Tensor, masks) -> torch.Tensor:
    """The Keras layer order in plain PyTorch: NCHW, ReLU then pooling, explicit masks."""
    h = F.relu(F.conv2d(x.unsqueeze(1), model.conv1.weight, model.conv1.bias))
    h = F.max_pool2d(F.relu(F.conv2d(h, model.conv2.weight, model.conv2.bias)), 2)
    if masks is not None:
        h = h * masks[0] / 0.75
    h = F.relu(F.linear(torch.flatten(h, 1), model.fc1.weight, model.fc1.bias))
    if masks is not None:
        h = h * masks[1] / 0.5
    return F.linear(h, model.fc2.weight, model.fc2.bias)


def _grads(model: nn.Module, out: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(out, y).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("training", [False, True])
def test_conv_dropout_model_matches_the_plain_reference(training):
    torch.manual_seed(0)
    model = emnist_conv_dropout().train(training)
    x = torch.rand(6, 28, 28)
    y = torch.randint(0, 62, (6,))
    torch.manual_seed(5)
    out = model(x)
    got = _grads(model, out, y)
    masks = None
    if training:  # the same draws, in the same order, as the model's two dropout layers
        torch.manual_seed(5)
        masks = (keep_mask((6, 64, 12, 12), 0.25), keep_mask((6, 128), 0.5))
    ref_out = _reference_conv_dropout(model, x, masks)
    want = _grads(model, ref_out, y)
    assert torch.allclose(out, ref_out, rtol=1e-4, atol=1e-5)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-6)


def test_fedavg_cnn_matches_the_plain_reference():
    torch.manual_seed(0)
    model = fedavg_cnn()
    x = torch.rand(3, 28, 28)
    h = F.max_pool2d(F.relu(model.conv1(x.unsqueeze(1))), 2)
    h = F.max_pool2d(F.relu(model.conv2(h)), 2)
    ref = model.fc2(F.relu(model.fc1(torch.flatten(h, 1))))
    assert torch.allclose(model(x), ref, rtol=1e-4, atol=1e-5)
