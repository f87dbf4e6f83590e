"""Executors: where client work runs (in-process, local worker processes, Ray).

``RayExecutor`` is imported lazily (``from fedp13n.execution import RayExecutor`` works
without importing ray until one is built).

Names are imported on first use (PEP 562): importing the package costs nothing."""

from fedp13n.utils.lazy import lazy_exports

_EXPORTS = {
    "ClientTaskTimeout": "fedp13n.execution.base",
    "ClientWorkError": "fedp13n.execution.base",
    "EXECUTOR_KINDS": "fedp13n.execution.base",
    "Executor": "fedp13n.execution.base",
    "InProcessExecutor": "fedp13n.execution.in_process",
    "LocalProcessExecutor": "fedp13n.execution.process_pool",
    "LocalRef": "fedp13n.execution.base",
    "RayExecutor": "fedp13n.execution.ray_executor",
    "SharedRef": "fedp13n.execution.base",
    "make_executor": "fedp13n.execution.factory",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
