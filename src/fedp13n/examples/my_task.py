"""my_task.py: a data set and a model of one's own, for fedp13n's whole experiment."""

import numpy as np
from torch import nn

NUM_CLIENTS, NUM_CLASSES, DIM = 30, 5, 16


def load():
    """Federated (train, test) data: each a plain mapping {client_id: (x, y)}."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(NUM_CLASSES, DIM))
    train, test = {}, {}
    for k in range(NUM_CLIENTS):
        shift = rng.normal(size=DIM)  # each client's own drift of the features
        mix = rng.dirichlet(np.full(NUM_CLASSES, 0.5))  # and its own mix of labels
        for part, n in ((train, 60), (test, 20)):
            y = rng.choice(NUM_CLASSES, size=n, p=mix)
            x = centers[y] + shift + 1.5 * rng.normal(size=(n, DIM))
            part[f"client{k}"] = (x.astype(np.float32), y)
    return train, test


class MLP(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.layers(x)  # logits (batch, num_classes)


def build(num_classes):
    """fedp13n passes num_classes (the largest label + 1, or the num_classes setting)."""
    return MLP(num_classes)
