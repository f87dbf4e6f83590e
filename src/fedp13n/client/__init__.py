"""A client's program, written once: local training (:class:`LocalTraining`) and
evaluation (:func:`evaluate`), used by FedAvg's client work and every personalization
strategy (see :mod:`fedp13n.client.program`)."""

from fedp13n.client.program import (
    EVAL_BATCH_SIZE,
    LocalTraining,
    TrainStats,
    evaluate,
    generator_from_torch,
)

__all__ = ["EVAL_BATCH_SIZE", "LocalTraining", "TrainStats", "evaluate", "generator_from_torch"]
