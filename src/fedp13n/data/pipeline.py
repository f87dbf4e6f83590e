"""Which examples each local step of a client sees: the client's batch plan.

Client work (FedAvg's local training, fine-tuning in personalization) and the batched
multi-client engine all take their batches from :func:`batch_plan`, so they train on
exactly the same examples in the same order for the same random generator.

Pipelines:

* ``"epochs"``: ``epochs`` passes over the data; each pass is a fresh permutation drawn
  from ``generator`` (or the stored order without shuffling) cut into batches of
  ``batch_size``, the last one smaller. ``epochs * ceil(n / batch_size)`` steps.
"""

from __future__ import annotations

import numpy as np

PIPELINES = ("epochs",)


def batch_plan(
    num_examples: int,
    batch_size: int,
    *,
    epochs: int = 1,
    shuffle: bool = False,
    generator: np.random.Generator | None = None,
    pipeline: str = "epochs",
) -> list[np.ndarray]:
    """The example indices of every local step, in order (see the module docstring)."""
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {PIPELINES}, got {pipeline!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if shuffle and generator is None:
        raise ValueError("shuffle=True needs a numpy Generator so the order is reproducible.")
    plan: list[np.ndarray] = []
    for _ in range(epochs):
        order = generator.permutation(num_examples) if shuffle else np.arange(num_examples)
        plan.extend(order[s : s + batch_size] for s in range(0, num_examples, batch_size))
    return plan
