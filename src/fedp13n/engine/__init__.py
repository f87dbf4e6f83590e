"""Batched execution of many clients at once (the multi-client engine).

See :mod:`fedp13n.engine.batched`. This package may use :mod:`fedp13n.data`,
:mod:`fedp13n.models`, :mod:`fedp13n.utils` and :mod:`fedp13n.execution`; FedAvg and the
personalization evaluation call it, never the other way round.


Names are imported on first use (PEP 562): importing the package costs nothing."""

from fedp13n.utils.lazy import by_module, lazy_exports

_EXPORTS = by_module(
    {
        "fedp13n.engine.batched": "MultiClientEngine OptimizerSpec StrategySpec can_batch "
        "engine_or_none fedavg_generators note_fallback optimizer_spec strategy_from_builder",
    }
)
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
