"""Executors: where client work runs (in-process, local worker processes, Ray).

``RayExecutor`` is imported lazily (``from fedp13n.execution import RayExecutor`` works
without importing ray until one is built).
"""

from typing import Any

from fedp13n.execution.base import (
    ClientTaskTimeout,
    ClientWorkError,
    Executor,
    LocalRef,
    SharedRef,
)
from fedp13n.execution.factory import EXECUTOR_KINDS, make_executor
from fedp13n.execution.in_process import InProcessExecutor
from fedp13n.execution.process_pool import LocalProcessExecutor

__all__ = [
    "EXECUTOR_KINDS",
    "ClientTaskTimeout",
    "ClientWorkError",
    "Executor",
    "InProcessExecutor",
    "LocalProcessExecutor",
    "LocalRef",
    "RayExecutor",
    "SharedRef",
    "make_executor",
]


def __getattr__(name: str) -> Any:
    if name == "RayExecutor":
        from fedp13n.execution.ray_executor import RayExecutor

        return RayExecutor
    raise AttributeError(f"module 'fedp13n.execution' has no attribute {name!r}")
