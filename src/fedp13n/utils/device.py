"""Where and in what precision client work computes.

* :func:`resolve_device` and :func:`resolve_precision` turn the names a user gives
  (``"auto"``, ``"cuda:1"``, ``"bf16"``...) into a ``torch.device`` and a :class:`Precision`
  (a reusable context manager around forward/backward passes), refusing what this machine
  cannot do with a one-line ``ValueError``.
* :class:`Compute`: device, precision, determinism and multi-client engine as one value,
  checked once where a run or a builder starts (:meth:`Compute.resolve`), trusted below.
* Placement (:func:`work_device`, :func:`pin_process_to_gpu`, :func:`gpu_assignment`): an
  executor's worker may be pinned to one GPU by setting ``CUDA_VISIBLE_DEVICES`` before
  CUDA starts in it (as Ray does for tasks that claim ``num_gpus``); client work asking for
  any CUDA device then runs there, so algorithms never know where they run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from fedp13n.utils.checks import check_bool

PRECISIONS = ("auto", "fp32", "bf16", "tf32")
#: Warnings given once per process (their keys).
_warned: set[str] = set()


# -- devices ------------------------------------------------------------------------------------
def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or
    ``"mps"`` as a ``torch.device``; ``ValueError`` for one that is unknown or absent."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ValueError(
            f"device must be a string such as 'auto', 'cpu' or 'cuda', got {device!r}."
        )
    name = device.strip().lower()
    cuda = range(torch.cuda.device_count()) if torch.cuda.is_available() else ()
    have = ", ".join(["cpu", *(f"cuda:{i}" for i in cuda)] + (["mps"] if _mps_available() else []))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise ValueError(f"device 'mps' is not available on this machine; available: {have}.")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        index = name.partition(":")[2]
        if name != "cuda" and not re.fullmatch(r"[0-9]+", index):
            raise ValueError(
                f"invalid device {device!r}: use 'cuda' or 'cuda:N'; available: {have}."
            )
        name = f"cuda:{int(index)}" if index else "cuda"
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} is not available: no CUDA GPU (or a CPU-only torch "
                f"{torch.__version__}); available: {have}."
            )
        if index and int(index) >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} is not available; available: {have}.")
        return torch.device(name)
    raise ValueError(
        f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' "
        f"(available: {have})."
    )


# -- precision ----------------------------------------------------------------------------------
def _read_cpuinfo() -> str:
    """The text of /proc/cpuinfo, or '' where there is none (tests replace this)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively: Linux /proc/cpuinfo lists the
    ``avx512_bf16`` or ``amx_bf16`` flag. False elsewhere (not detected)."""
    if not sys.platform.startswith("linux"):
        return False
    for line in _read_cpuinfo().splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


@dataclass
class Precision:
    """A numeric precision on a device; use it as ``with precision: ...`` around forward
    (and backward) passes, as often as wanted. ``name`` is ``fp32`` (nothing changes: the
    reference numbers), ``bf16`` (``torch.autocast`` to bfloat16: products and convolutions
    rounded, weights and optimizer state stay float32) or ``tf32`` (TensorFloat-32 products
    on CUDA, Ampere or newer: ``allow_tf32`` set while inside, restored on leaving)."""

    name: str
    device_type: str
    _stack: list = field(default_factory=list, repr=False)

    def __enter__(self) -> Precision:
        stack = contextlib.ExitStack()
        if self.name == "bf16":
            # No cast cache: a region may span many optimizer steps (a client's whole local
            # training), and cached bf16 copies of the weights would go stale after the
            # first step (the model would train on its initial weights).
            stack.enter_context(
                torch.autocast(self.device_type, dtype=torch.bfloat16, cache_enabled=False)
            )
        elif self.name == "tf32":
            for backend in (torch.backends.cuda.matmul, torch.backends.cudnn):
                stack.callback(setattr, backend, "allow_tf32", backend.allow_tf32)
                backend.allow_tf32 = True
        self._stack.append(stack)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.pop().close()


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> Precision:
    """``"fp32"``, ``"bf16"``, ``"tf32"`` or ``"auto"`` on ``device`` (see
    :class:`Precision`). ``"auto"`` is fp32 on every device: the reference numbers; faster
    precisions change results, so they are asked for by name (in particular "auto" never
    picks bf16 on a CPU that would emulate it). ``ValueError`` for an unknown name or tf32
    off CUDA; bf16 on a CPU without native bf16 warns once."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    kind = dev.type
    if not isinstance(precision, str) or precision.lower() not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    name = precision.lower()
    if name == "auto":
        name = "fp32"
    if name == "tf32" and kind != "cuda":
        raise ValueError(
            f"precision 'tf32' is a CUDA setting (TensorFloat-32 on NVIDIA GPUs), not for "
            f"device {str(dev)!r}; use 'fp32' or 'bf16' there."
        )
    if name == "bf16" and kind == "cpu" and not cpu_has_native_bf16() and "bf16" not in _warned:
        _warned.add("bf16")
        warnings.warn(
            "precision 'bf16' on this CPU is emulated (no AVX512-BF16/AMX): slower than fp32 "
            "and less accurate; use it only to test bf16 numerics.",
            RuntimeWarning,
            stacklevel=2,
        )
    return Precision(name, kind)


# -- determinism --------------------------------------------------------------------------------
def set_deterministic(enabled: bool = True) -> None:
    """Deterministic kernels on (or off): ``torch.use_deterministic_algorithms(enabled)``,
    ``torch.backends.cudnn.benchmark = False`` (on: no autotuning, which may pick different
    kernels run to run) and ``cudnn.deterministic``. Turning it on also sets
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (unless already set), which cuBLAS needs for
    reproducible products; cuBLAS reads it when CUDA starts, so call this before the first
    CUDA operation of the process. CPU kernels of the models here are deterministic already.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = bool(enabled)
    torch.use_deterministic_algorithms(bool(enabled))


# -- placement of client work -------------------------------------------------------------------
#: The device CUDA client work of this process runs on when an executor pinned the process
#: to one GPU (None: not pinned).
_pinned: torch.device | None = None
#: Whether deterministic kernels were already set up in this process (None: not yet).
_determinism: bool | None = None


def pin_process_to_gpu(index: int | str | None) -> None:
    """Pin this process to one GPU: client work asking for a CUDA device runs on it.

    ``index`` is the GPU's number among the machine's GPUs: ``CUDA_VISIBLE_DEVICES`` is set
    to it, so call this before the first CUDA operation of the process (an executor's
    worker does, first thing). ``None`` keeps ``CUDA_VISIBLE_DEVICES`` as it is (Ray set it
    for a task that claimed a GPU). Either way the pinned GPU is this process's ``cuda:0``.
    """
    global _pinned
    if index is not None:
        if isinstance(index, bool) or not str(index).isdigit():
            raise ValueError(f"a GPU index must be an integer >= 0, got {index!r}.")
        os.environ["CUDA_VISIBLE_DEVICES"] = str(int(index))
    _pinned = torch.device("cuda", 0)


def pinned_device() -> torch.device | None:
    """The GPU this process was pinned to (its ``cuda:0``), or None."""
    return _pinned


def gpu_assignment(num_workers: int, gpus: list[int] | tuple[int, ...]) -> list[int]:
    """The GPU of each of ``num_workers`` worker slots: round robin over ``gpus``
    (``[0, 1]`` and 4 workers: ``[0, 1, 0, 1]``); a replaced worker keeps its slot's GPU."""
    if not gpus:
        raise ValueError("gpu_assignment needs at least one GPU index.")
    return [gpus[i % len(gpus)] for i in range(num_workers)]


def cuda_indices(device: str | torch.device) -> list[int]:
    """The GPU numbers a device setting spreads worker processes over: ``"cuda"`` (or
    ``"auto"`` on a CUDA machine): every GPU; ``"cuda:N"``: GPU N alone; else ``[]``."""
    dev = resolve_device(device)
    if dev.type != "cuda":
        return []
    if dev.index is not None:
        return [dev.index]
    return list(range(torch.cuda.device_count()))


@functools.lru_cache(maxsize=16)
def _resolved(name: str) -> torch.device:
    return resolve_device(name)


def work_device(
    requested: str | torch.device = "cpu", *, deterministic: bool = True
) -> torch.device:
    """The device client work asking for ``requested`` runs on in this process.

    ``"cpu"`` is the CPU. A CUDA device (``"cuda"``, ``"cuda:N"``) is the GPU this process
    was pinned to (:func:`pin_process_to_gpu`) if any, else the device itself (resolved
    with :func:`resolve_device`). The first CUDA work of a process sets up its kernels'
    determinism (:func:`set_deterministic` with ``deterministic``): worker processes do not
    inherit the driver's setting.
    """
    global _determinism
    name = str(requested).strip().lower()
    if name == "cpu":
        return torch.device("cpu")
    if _pinned is not None and (name == "auto" or name.startswith("cuda")):
        dev = _pinned
    else:
        dev = _resolved(name)
    if dev.type == "cuda" and _determinism is not bool(deterministic):
        set_deterministic(deterministic)
        _determinism = bool(deterministic)
    return dev


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (or buffer); the CPU for one with neither."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are one (``cuda`` is ``cuda:0``)."""
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def check_compute(device: str | torch.device, precision: str) -> tuple[str, str]:
    """Validate a (device, precision) pair given to the library: ``(device, precision)``
    names as client work takes them (``"auto"`` resolved), or a one-line ``ValueError``
    (an absent device, tf32 off CUDA, an unknown name)."""
    dev = resolve_device(device)
    return str(dev), resolve_precision(precision, dev).name


# -- one value for all of it --------------------------------------------------------------------
@dataclass(frozen=True)
class Compute:
    """Where and how client work computes, as one value: made (and checked) once by
    :meth:`resolve` where a run or a public builder starts, then passed down and trusted
    (the constructor checks nothing).

    ``device`` is a normalised name (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``),
    ``precision`` ``"fp32"``, ``"bf16"`` or ``"tf32"``, ``deterministic`` asks for
    deterministic GPU kernels, ``engine`` is the :class:`fedp13n.engine.MultiClientEngine`
    that batches clients (None: one client per task), which computes on this device in
    this precision.
    """

    device: str = "cpu"
    precision: str = "fp32"
    deterministic: bool = True
    engine: Any = None

    @classmethod
    def resolve(
        cls,
        device: str | torch.device | None = None,
        precision: str | None = None,
        deterministic: bool = True,
        engine: Any = None,
    ) -> Compute:
        """The checked Compute; one-line errors for an absent device, a precision it cannot
        use, a non-bool ``deterministic``, or an ``engine`` elsewhere or in another
        precision. ``device``/``precision`` left out: the engine's, else cpu/fp32."""
        check_bool("deterministic", deterministic)
        if engine is None:
            dev, prec = check_compute(device or "cpu", precision or "fp32")
            return cls(dev, prec, bool(deterministic))
        own = getattr(engine, "compute", None)
        if not isinstance(own, Compute):
            raise TypeError(
                f"engine must be a fedp13n.engine.MultiClientEngine, got {type(engine).__name__}."
            )
        if device is not None and not same_device(resolve_device(device), own.torch_device):
            raise ValueError(
                f"device={str(device)!r} but the engine runs on {own.device}; leave device "
                "out (it follows the engine) or build the MultiClientEngine on that device."
            )
        if precision is not None and precision != own.precision:
            raise ValueError(
                f"precision={precision!r} but the engine computes in {own.precision}; leave "
                "precision out (it follows the engine) or build the MultiClientEngine with "
                "that precision."
            )
        return cls(own.device, own.precision, bool(deterministic), engine)

    @classmethod
    def given(
        cls,
        compute: Compute | None,
        *,
        device: Any = None,
        precision: Any = None,
        deterministic: Any = True,
        engine: Any = None,
    ) -> Compute:
        """A public builder's Compute: ``compute`` itself (made by :meth:`resolve`) or,
        without it, the separate keywords resolved; both at once is a ``ValueError``."""
        if compute is None:
            return cls.resolve(device, precision, deterministic, engine)
        if not isinstance(compute, Compute):
            raise TypeError(
                f"compute must be a fedp13n.utils.device.Compute (Compute.resolve(...)), got "
                f"{type(compute).__name__}."
            )
        if (device, precision, engine) != (None, None, None) or deterministic is not True:
            raise ValueError(
                "give compute= or device=/precision=/deterministic=/engine=, not both: "
                "compute holds them all."
            )
        return compute

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def without_engine(self) -> Compute:
        """This Compute for the per-client path (what travels to worker processes)."""
        return self if self.engine is None else replace(self, engine=None)

    def placed(self) -> torch.device:
        """The device this process's client work runs on (:func:`work_device`: a worker
        pinned to a GPU uses its GPU; the first CUDA work sets up determinism)."""
        return work_device(self.device, deterministic=self.deterministic)

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The precision's context around forward/backward passes on ``device``."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return Precision(self.precision, device.type)
