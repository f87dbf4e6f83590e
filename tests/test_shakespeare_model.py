"""TFF's Shakespeare model in PyTorch: the parameter count and the logits, loss and
accuracy of TFF's own Keras model with the same weights (recorded by
``tests/data/record_tff_shakespeare_model.py`` in the TFF 0.87 venv), the accuracy's
masking by hand, Keras' masking and initialisation, training and ``torch.func`` batching."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from fedp13n.models import (
    ShakespeareRNN,
    create_recurrent_model,
    get_model_fn,
    masked_accuracy,
    masked_accuracy_counts,
    model_fn_for,
    shakespeare_loss,
)
from fedp13n.models import shakespeare as shakespeare_module
from fedp13n.models.shakespeare import KerasLSTM


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the LSTM's small per-step matmuls gain nothing from more, and on
    a busy machine spinning threads made these tests ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


RECORD = json.loads((Path(__file__).parent / "data/tff_shakespeare_model.json").read_text())


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def closed_form(shape: tuple[int, ...], k: int) -> torch.Tensor:
    """The recording's weight tensor ``k``: ``amplitude[k] * sin(arange(size) + k)`` in
    Keras' (row-major) layout."""
    w = RECORD["amplitude"][k] * np.sin(np.arange(math.prod(shape), dtype=np.float64) + k)
    return torch.from_numpy(w.reshape(shape).astype(np.float32))


def tff_weighted_model() -> ShakespeareRNN:
    """Our model with the recording's weights (Keras' dense kernel is ``(in, out)``,
    nn.Linear's ``(out, in)``; everything else has Keras' layout)."""
    model = create_recurrent_model(90, 80)
    keras_order = [
        model.embedding.weight,
        model.lstm1.kernel,
        model.lstm1.recurrent_kernel,
        model.lstm1.bias,
        model.lstm2.kernel,
        model.lstm2.recurrent_kernel,
        model.lstm2.bias,
    ]
    with torch.no_grad():
        for k, p in enumerate(keras_order):
            p.copy_(closed_form(tuple(p.shape), k))
        model.dense.weight.copy_(closed_form((256, 90), 7).T)
        bias = closed_form((90,), 8)
        space, bump = RECORD["space_bump"]
        bias[space] += bump
        model.dense.bias.copy_(bias)
    return model


def test_parameter_count_is_tffs_keras_count_params():
    assert RECORD["count_params"] == 820_522  # Keras' count_params() of TFF's task model
    # embedding 90x8; LSTM 4*256*(in + 256 + 1), one bias; dense 256x90 + 90
    by_hand = 90 * 8 + 4 * 256 * (8 + 256 + 1) + 4 * 256 * (256 + 256 + 1) + 256 * 90 + 90
    assert by_hand == 820_522
    assert num_params(create_recurrent_model(90)) == 820_522
    assert num_params(get_model_fn("shakespeare_rnn")(90)) == 820_522
    shapes = [tuple(s) for _, s in RECORD["weight_shapes"]]
    model = create_recurrent_model(90)
    ours = [tuple(p.shape) for p in model.parameters()]
    assert ours[:7] == shapes[:7] and ours[7] == shapes[7][::-1] and ours[8] == shapes[8]


@pytest.mark.parametrize("path", ["fused", "loop"])
def test_logits_loss_and_accuracy_equal_tffs_keras_model(path, monkeypatch):
    if path == "loop":
        monkeypatch.setattr(shakespeare_module, "_fused_applies", lambda *_: False)
    model = tff_weighted_model().eval()
    x, y = torch.tensor(RECORD["x"]), torch.tensor(RECORD["y"])
    assert x.shape == y.shape == (3, 80)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (3, 90, 80)  # (batch, vocab, sequence)
    for entry in RECORD["logits_at"]:
        b, t = entry["position"]
        np.testing.assert_allclose(logits[b, :, t].numpy(), entry["logits"], rtol=0, atol=1e-5)
    assert logits.argmax(dim=1).tolist() == RECORD["argmax"]
    # TFF's loss is the plain mean over all 240 positions (its forward_pass drops the mask)
    assert RECORD["loss"] == pytest.approx(RECORD["loss_without_mask"], abs=1e-7)
    assert abs(RECORD["loss"] - RECORD["loss_keras_eager"]) > 0.1
    assert shakespeare_loss is F.cross_entropy
    assert shakespeare_loss(logits, y).item() == pytest.approx(RECORD["loss"], abs=1e-5)
    metrics = RECORD["metrics"]
    correct, count = masked_accuracy_counts(logits, y)
    assert int(count) == metrics["num_tokens"] == 105  # 80 + 0 + 25 non-pad targets
    assert int(correct) == 10
    assert masked_accuracy(logits, y).item() == pytest.approx(metrics["accuracy"], abs=1e-7)


def test_the_recorded_batch_has_what_the_oracle_should_cover():
    x, y = np.array(RECORD["x"]), np.array(RECORD["y"])
    pad, oov, bos, eos = RECORD["special_tokens_pad_oov_bos_eos"]
    assert (pad, oov, bos, eos) == (0, 87, 88, 89)
    assert (x != 0).sum(1).tolist() == [80, 1, 26]  # full, [eos, pad...], short
    assert x[1, 0] == eos and (y[1] == pad).all()  # a sequence with only padding targets
    assert (y[2] == oov).sum() == 5 and y[2, 24] == eos  # '~', '{', '}', '<', '>' are OOV


def test_accuracy_masks_only_the_pad_targets_by_hand():
    # 2 sequences of 4 positions, 5 ids; the arg-max per position is set by a one-hot
    predicted = torch.tensor([[3, 1, 4, 0], [2, 2, 0, 1]])
    targets = torch.tensor([[3, 2, 4, 0], [2, 4, 0, 0]])
    logits = F.one_hot(predicted, 5).float().transpose(1, 2)  # (2, 5, 4)
    # counted: targets != 0 -> 3 + 2 = 5 positions; correct among them: (0,0), (0,2), (1,0)
    correct, count = masked_accuracy_counts(logits, targets)
    assert (int(correct), int(count)) == (3, 5)
    assert masked_accuracy(logits, targets).item() == pytest.approx(3 / 5)
    # also leaving out id 4 (e.g. TFF's older tasks masking more ids): 2 correct of 3
    assert [int(v) for v in masked_accuracy_counts(logits, targets, (0, 4))] == [2, 3]
    # the pad prediction at (0, 3) / (1, 2) is right but never counted; all-pad -> 0
    assert masked_accuracy(logits, torch.zeros_like(targets)).item() == 0.0


def test_padding_carries_the_lstm_state_as_keras_masking():
    torch.manual_seed(0)
    model = create_recurrent_model(90, None).eval()
    x = torch.tensor([[88, 12, 24, 14, 0, 0, 0], [88, 12, 24, 14, 42, 65, 17]])
    with torch.no_grad():
        padded, short = model(x), model(x[:1, :4])
    # real positions: as without the padding; pad positions: the last real step's output
    torch.testing.assert_close(padded[0, :, :4], short[0], rtol=0, atol=1e-6)
    for t in (4, 5, 6):
        torch.testing.assert_close(padded[0, :, t], short[0, :, 3], rtol=0, atol=1e-6)
    assert not torch.allclose(padded[1, :, 4], padded[1, :, 3])
    # padding inside a sequence (the loop): skipped, the state carried over it
    inside = torch.tensor([[88, 12, 0, 24, 14]])
    with torch.no_grad():
        skipped = model(inside)
    expected = short[0][:, [0, 1, 1, 2, 3]]  # [88, 12, 24, 14] without the pad
    torch.testing.assert_close(skipped[0], expected, rtol=0, atol=1e-6)


def test_fused_kernel_equals_the_loop_where_it_applies():
    torch.manual_seed(2)
    lstm = KerasLSTM(8, 16)
    x = torch.randn(4, 7, 8)
    ends = torch.tensor([7, 3, 1, 6])  # real positions per row, padding after
    mask = torch.arange(7) < ends[:, None]
    assert shakespeare_module._fused_applies(x, mask, lstm.kernel)
    weights = torch.randn(4, 7, 16)
    outs, grads = [], []
    for run in (lstm._fused, lstm._loop):
        out = run(x, mask)
        outs.append(out.detach())
        grads.append(torch.autograd.grad((out * weights).sum(), list(lstm.parameters())))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-6)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # padding inside a row, a row of padding only, or a torch.func transform: the loop
    inside = mask.clone()
    inside[0, 2] = False
    assert not shakespeare_module._fused_applies(x, inside, lstm.kernel)
    assert not shakespeare_module._fused_applies(x, mask & (ends[:, None] > 1), lstm.kernel)
    seen = []
    vmap(lambda xb: seen.append(shakespeare_module._fused_applies(xb, mask, lstm.kernel)) or xb)(
        x.unsqueeze(0)
    )
    assert seen == [False]


def test_one_lstm_step_is_keras_formula():
    torch.manual_seed(1)
    lstm = KerasLSTM(3, 2)
    x = torch.randn(1, 1, 3)
    z = x[0, 0] @ lstm.kernel + lstm.bias  # h0 = c0 = 0
    i, f, g, o = (
        torch.sigmoid(z[:2]),
        torch.sigmoid(z[2:4]),
        torch.tanh(z[4:6]),
        torch.sigmoid(z[6:]),
    )
    c = f * 0 + i * g
    with torch.no_grad():
        out = lstm(x, torch.ones(1, 1, dtype=torch.bool))
    torch.testing.assert_close(out[0, 0], (o * torch.tanh(c)).detach())


def test_keras_initialisation():
    torch.manual_seed(0)
    model = create_recurrent_model(90)
    emb = model.embedding.weight
    assert emb.abs().max() <= 0.05 and emb.std() > 0.025  # uniform(-0.05, 0.05): std .029
    for lstm, fan_in in ((model.lstm1, 8), (model.lstm2, 256)):
        std = math.sqrt(2 / fan_in) / 0.87962566103423978  # he_normal, truncated at 2 std
        assert lstm.kernel.abs().max() <= 2 * std
        assert lstm.kernel.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
        r = lstm.recurrent_kernel.detach()  # (256, 1024): orthonormal rows
        torch.testing.assert_close(r @ r.T, torch.eye(256), rtol=0, atol=1e-4)
        expected_bias = torch.zeros(1024)
        expected_bias[256:512] = 1.0  # unit_forget_bias
        assert torch.equal(lstm.bias.detach(), expected_bias)
    limit = math.sqrt(6 / (256 + 90))  # Glorot uniform
    assert model.dense.weight.abs().max() <= limit and model.dense.weight.std() > limit / 2
    assert torch.equal(model.dense.bias.detach(), torch.zeros(90))
    torch.manual_seed(0)
    again = create_recurrent_model(90)
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True)
    )


def test_one_sgd_step_reduces_the_loss():
    torch.manual_seed(0)
    model = model_fn_for("shakespeare_rnn", 90)()
    x, y = torch.tensor(RECORD["x"])[:, :20], torch.tensor(RECORD["y"])[:, :20]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = shakespeare_loss(model(x), y)
    assert before.item() == pytest.approx(math.log(90), abs=0.05)  # near uniform at init
    before.backward()
    opt.step()
    with torch.no_grad():
        assert shakespeare_loss(model(x), y).item() < before.item() - 0.05


def test_vmap_over_two_parameter_sets_equals_two_calls():
    torch.manual_seed(0)
    model = create_recurrent_model(90)
    other = create_recurrent_model(90)
    params = [dict(model.named_parameters()), dict(other.named_parameters())]
    stacked = {n: torch.stack([p[n].detach() for p in params]) for n in params[0]}
    x = torch.tensor(RECORD["x"])[:, :12].reshape(1, 3, 12).repeat(2, 1, 1)
    x[1, 0, 6:] = 0  # the second client's first sequence ends in padding
    y = torch.roll(x, -1, dims=2)

    def loss(p, xb, yb):
        return shakespeare_loss(functional_call(model, p, (xb,)), yb)

    logits = vmap(lambda p, xb: functional_call(model, p, (xb,)))(stacked, x)
    grads = vmap(grad(loss))(stacked, x, y)
    for k, (m, p) in enumerate(zip((model, other), params, strict=True)):
        torch.testing.assert_close(logits[k], m(x[k]).detach(), rtol=0, atol=1e-6)
        m.zero_grad()
        loss(p, x[k], y[k]).backward()
        for n, t in p.items():
            torch.testing.assert_close(grads[n][k], t.grad, rtol=1e-4, atol=1e-7)


def test_bad_inputs_are_refused_in_one_line():
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 2"):
        create_recurrent_model(1)
    with pytest.raises(ValueError, match="sequence_length must be a positive integer"):
        create_recurrent_model(90, 0)
    with pytest.raises(ValueError, match=r"token ids of shape \(B, S\)"):
        create_recurrent_model(90)(torch.rand(2, 80))
