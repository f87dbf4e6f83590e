"""Executors: where client work runs (in-process, local worker processes, Ray)."""

from fedp13n.execution.base import ClientWorkError, Executor, LocalRef, SharedRef
from fedp13n.execution.in_process import InProcessExecutor

__all__ = ["ClientWorkError", "Executor", "InProcessExecutor", "LocalRef", "SharedRef"]
