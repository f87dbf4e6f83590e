"""A Reptile(K) stage (Personalized FedAvg's second stage, Jiang et al. 2019, Algorithm 1):
clients take K local steps from the global weights and the server applies Adam to the
averaged delta. Checked against a plain numpy loop with Adam written out by hand."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from fedp13n.algorithms import build_weighted_fed_avg
from fedp13n.data import ClientDataset

D, C, K, B = 3, 4, 2, 2
LR, SERVER_LR, BETAS, EPS = 0.1, 0.01, (0.9, 0.999), 1e-8


def model_fn() -> nn.Module:
    return nn.Linear(D, C)


def _grad(W, b, x, y):
    z = x @ W.T + b
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    g = p.copy()
    g[np.arange(len(y)), y] -= 1.0
    g /= len(y)
    return g.T @ x, g.sum(axis=0)


def _reptile_by_hand(W, b, clients, rounds):
    """K steps of SGD on the repeated data (no shuffle), average of deltas weighted by the
    examples each client processed, server Adam on that pseudo-gradient."""
    m = [np.zeros_like(W), np.zeros_like(b)]
    v = [np.zeros_like(W), np.zeros_like(b)]
    for t in range(1, rounds + 1):
        deltas, weights = [], []
        for x, y in clients:
            stream = np.arange(K * B) % len(y)  # repeat() then batch(B), take(K)
            Wk, bk = W.copy(), b.copy()
            for s in range(K):
                idx = stream[s * B : (s + 1) * B]
                gW, gb = _grad(Wk, bk, x[idx], y[idx])
                Wk, bk = Wk - LR * gW, bk - LR * gb
            deltas.append((W - Wk, b - bk))
            weights.append(K * B)
        total = sum(weights)
        g = [sum(w * d[i] for w, d in zip(weights, deltas, strict=True)) / total for i in (0, 1)]
        params = [W, b]
        for i in (0, 1):
            m[i] = BETAS[0] * m[i] + (1 - BETAS[0]) * g[i]
            v[i] = BETAS[1] * v[i] + (1 - BETAS[1]) * g[i] ** 2
            m_hat = m[i] / (1 - BETAS[0] ** t)
            v_hat = v[i] / (1 - BETAS[1] ** t)
            params[i] = params[i] - SERVER_LR * m_hat / (np.sqrt(v_hat) + EPS)
        W, b = params
    return W, b


def test_reptile_rounds_equal_a_plain_loop_with_adam_by_hand():
    rng = np.random.default_rng(3)
    clients = []
    for n in (3, 5):
        x = rng.normal(size=(n, D)).astype(np.float32)
        y = rng.integers(0, C, size=n).astype(np.int64)
        clients.append((x, y))
    process = build_weighted_fed_avg(
        model_fn,
        functools.partial(torch.optim.SGD, lr=LR),
        functools.partial(torch.optim.Adam, lr=SERVER_LR, betas=BETAS, eps=EPS),
        client_epochs=None,
        max_steps=K,
        batch_size=B,
        shuffle=False,
        client_pipeline="tff",
    )
    state = process.initialize()
    W0 = state.model["weight"].double().numpy()
    b0 = state.model["bias"].double().numpy()
    datasets = [ClientDataset(x, y) for x, y in clients]
    for _ in range(2):  # two rounds: Adam's moments and bias correction carry over
        state, metrics = process.next(state, datasets)
        assert metrics.num_examples == 2 * K * B  # exactly K steps of B examples per client
    W, b = _reptile_by_hand(W0, b0, [(x.astype(np.float64), y) for x, y in clients], 2)
    got_W = state.model["weight"].double().numpy()
    got_b = state.model["bias"].double().numpy()
    assert np.abs(got_W - W).max() < 1e-6 and np.abs(got_b - b).max() < 1e-6
    # Adam's first steps are about its learning rate each (sign-like): most weights moved
    # by about 2 * lr in two rounds, which plain averaging (lr 0.1 SGD deltas) would not do
    assert (np.abs(got_W - W0) > 1.5 * SERVER_LR).mean() > 0.5
    assert state.optimizer_state["state"][0]["step"] == 2
