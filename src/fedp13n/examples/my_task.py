"""my_task.py: a data set and a model of one's own, for fedp13n's whole experiment."""

import numpy as np
from torch import nn

import fedp13n

NUM_CLIENTS, NUM_CLASSES, DIM = 30, 5, 16


def load():
    """Federated (train, test) data from one labelled pool of one's own arrays, split
    among the clients by a Dirichlet(0.5) label skew (fedp13n.partition). A plain
    mapping {client_id: (x, y)} for train and for test works as well."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(NUM_CLASSES, DIM))
    y = rng.integers(0, NUM_CLASSES, size=2400)
    x = (centers[y] + 1.5 * rng.normal(size=(len(y), DIM))).astype(np.float32)
    return fedp13n.partition(x, y, NUM_CLIENTS, "dirichlet", alpha=0.5, seed=0)


class MLP(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.layers(x)  # logits (batch, num_classes)


def build(num_classes):
    """fedp13n passes num_classes (the largest label + 1, or the num_classes setting)."""
    return MLP(num_classes)
