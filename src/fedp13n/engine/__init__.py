"""Batched execution of many clients at once (the multi-client engine).

See :mod:`fedp13n.engine.batched`. This package may use :mod:`fedp13n.data`,
:mod:`fedp13n.models`, :mod:`fedp13n.utils` and :mod:`fedp13n.execution`; FedAvg and the
personalization evaluation call it, never the other way round.


Names are imported on first use (PEP 562): importing the package costs nothing."""

from fedp13n.utils.lazy import lazy_exports

_EXPORTS = {
    "MultiClientEngine": "fedp13n.engine.batched",
    "OptimizerSpec": "fedp13n.engine.batched",
    "StrategySpec": "fedp13n.engine.batched",
    "can_batch": "fedp13n.engine.batched",
    "engine_or_none": "fedp13n.engine.batched",
    "fedavg_generators": "fedp13n.engine.batched",
    "note_fallback": "fedp13n.engine.batched",
    "optimizer_spec": "fedp13n.engine.batched",
    "strategy_from_builder": "fedp13n.engine.batched",
}
__all__ = [
    "MultiClientEngine",
    "OptimizerSpec",
    "StrategySpec",
    "can_batch",
    "engine_or_none",
    "fedavg_generators",
    "note_fallback",
    "optimizer_spec",
    "strategy_from_builder",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
