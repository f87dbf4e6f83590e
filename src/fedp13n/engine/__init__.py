"""Batched execution of many clients at once (the multi-client engine).

See :mod:`fedp13n.engine.batched`. This package may use :mod:`fedp13n.data`,
:mod:`fedp13n.models`, :mod:`fedp13n.utils` and :mod:`fedp13n.execution`; FedAvg and the
personalization evaluation call it, never the other way round.
"""

from fedp13n.engine.batched import (
    ClientResult,
    MultiClientEngine,
    OptimizerSpec,
    StrategySpec,
    can_batch,
    engine_or_none,
    fedavg_generators,
    note_fallback,
    optimizer_spec,
    p13n_generator,
    strategy_from_builder,
)

__all__ = [
    "ClientResult",
    "MultiClientEngine",
    "OptimizerSpec",
    "StrategySpec",
    "can_batch",
    "engine_or_none",
    "fedavg_generators",
    "note_fallback",
    "optimizer_spec",
    "p13n_generator",
    "strategy_from_builder",
]
