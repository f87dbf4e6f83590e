"""A client's program, written once: :class:`LocalTraining` and :func:`evaluate`."""

from fedp13n.client.program import (
    EVAL_BATCH_SIZE,
    LocalTraining,
    TrainStats,
    evaluate,
    generator_from_torch,
)

__all__ = ["EVAL_BATCH_SIZE", "LocalTraining", "TrainStats", "evaluate", "generator_from_torch"]
