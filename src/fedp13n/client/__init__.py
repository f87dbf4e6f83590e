"""A client's program, written once: :class:`LocalTraining` and :func:`evaluate`; what a
FedAvg client sends back, whatever runs it: :class:`ClientOutput`."""

from fedp13n.client.program import (
    EVAL_BATCH_SIZE,
    LocalTraining,
    TrainStats,
    evaluate,
    generator_from_torch,
)
from fedp13n.client.result import ClientOutput

__all__ = [
    "EVAL_BATCH_SIZE",
    "ClientOutput",
    "LocalTraining",
    "TrainStats",
    "evaluate",
    "generator_from_torch",
]
