"""Executors: where client work runs (in-process, local worker processes, Ray).

``RayExecutor`` is imported lazily (``from fedp13n.execution import RayExecutor`` works
without importing ray until one is built).

Names are imported on first use (PEP 562): importing the package costs nothing."""

from fedp13n.utils.lazy import by_module, lazy_exports

_EXPORTS = by_module(
    {
        "fedp13n.execution.base": "ClientTaskTimeout ClientWorkError EXECUTOR_KINDS Executor "
        "LocalRef SharedRef",
        "fedp13n.execution.in_process": "InProcessExecutor",
        "fedp13n.execution.process_pool": "LocalProcessExecutor",
        "fedp13n.execution.ray_executor": "RayExecutor",
        "fedp13n.execution.factory": "make_executor",
    }
)
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
