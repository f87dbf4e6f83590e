"""Sharing read-only objects with worker processes through files, and the files' lifetime.

Two kinds of refs, both cheap to pickle:

* :class:`PathRef`, for objects that can be opened from a path by other processes (the
  *share-by-path protocol*, below): workers open the path once (e.g. memory-map arrays, so
  all workers share the page cache) and keep the object;
* :class:`FileRef`, for anything else: pickled once into a file that each worker reads once.

Share-by-path protocol: a class opts in by defining

* ``obj.to_shared_path(scratch: Path | None) -> Path | None``: a path other processes can
  open; objects that already live in a file or directory return it, others write
  themselves to ``scratch`` (a path that does not exist yet) and return it, or return None
  when ``scratch`` is None;
* ``cls.from_shared_path(path) -> obj``: open it (read-only) in another process.

This keeps the layers apart: :mod:`fedp13n.execution` knows the protocol, not the data
types that implement it (``fedp13n.data.ClientData`` does).

Temporary directories are named ``fedp13n-share-<pid>-*`` after the process that owns
them. They are removed on close, when the executor is garbage collected, at exit, and on
SIGTERM (converted into a clean exit when the program has no SIGTERM handler of its own);
those left by a process killed outright (SIGKILL, power loss) are removed by the next
executor that starts (:func:`sweep_stale_dirs`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from fedp13n.execution.base import SharedRef
from fedp13n.utils.fs import pid_alive

#: Objects resolved by shared refs in this process, by key (filled in worker processes).
_WORKER_CACHE: dict[Any, Any] = {}

DIR_PREFIX = "fedp13n-share-"
_LIVE_DIRS: set[str] = set()
_SIGTERM_INSTALLED = False


# ----------------------------------------------------------------------------------------
# Refs
# ----------------------------------------------------------------------------------------
class LocalFirstRef(SharedRef[Any]):
    """A ref that the publishing process resolves to the object itself (never pickled with
    the ref); other processes resolve it with :meth:`_resolve`."""

    _local: Any = None
    _has_local = False

    def _keep(self, local: Any, has_local: bool = True) -> None:
        self._local, self._has_local = local, has_local

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_local", None)
        state.pop("_has_local", None)
        return state

    def get(self) -> Any:
        return self._local if self._has_local else self._resolve()

    def _resolve(self) -> Any:
        raise NotImplementedError


def shares_by_path(obj: Any) -> bool:
    """Whether ``obj`` follows the share-by-path protocol (see the module docstring)."""
    return callable(getattr(obj, "to_shared_path", None)) and callable(
        getattr(type(obj), "from_shared_path", None)
    )


class PathRef(LocalFirstRef):
    """An object shared by a path (share-by-path protocol); each worker opens it once."""

    def __init__(self, kind: type, path: str | os.PathLike, local: Any = None) -> None:
        self.kind = kind  # pickled by reference: workers import the class
        self.path = str(Path(path).resolve())
        self._keep(local, local is not None)

    def _resolve(self) -> Any:
        key = ("path", self.kind, self.path)
        cached = _WORKER_CACHE.get(key)
        if cached is None:
            cached = _WORKER_CACHE[key] = self.kind.from_shared_path(self.path)
        return cached

    def __repr__(self) -> str:
        return f"PathRef({self.kind.__name__}, {self.path!r})"


class FileRef(LocalFirstRef):
    """An object pickled once into a file; each worker unpickles it once and keeps it."""

    def __init__(self, token: str, file: str, local: Any = None) -> None:
        self.token = token
        self.file = file
        self._keep(local)

    def _resolve(self) -> Any:
        if self.token in _WORKER_CACHE:
            return _WORKER_CACHE[self.token]
        try:
            with open(self.file, "rb") as f:
                obj = pickle.load(f)
        except FileNotFoundError:
            raise RuntimeError(
                f"the shared object {self.token} is gone ({self.file} was removed): the "
                "executor that shared it was closed or the reference was dropped. Keep the "
                "executor open and the ref alive while tasks use it."
            ) from None
        _WORKER_CACHE[self.token] = obj
        return obj

    def __repr__(self) -> str:
        return f"FileRef({self.token})"


def forget(tokens: list[str]) -> None:
    """Drop the worker-side copies of FileRefs whose refs were dropped by the driver."""
    for token in tokens:
        _WORKER_CACHE.pop(token, None)


# ----------------------------------------------------------------------------------------
# Temporary directories
# ----------------------------------------------------------------------------------------
def make_share_dir() -> str:
    """A new ``fedp13n-share-<pid>-*`` directory, removed at exit and on SIGTERM."""
    _install_sigterm_handler()
    path = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-")
    _LIVE_DIRS.add(path)
    return path


def remove_share_dir(path: str) -> None:
    _LIVE_DIRS.discard(path)
    shutil.rmtree(path, ignore_errors=True)


def sweep_stale_dirs(root: str | os.PathLike | None = None) -> list[str]:
    """Remove the share directories of processes that no longer run; returns them."""
    removed = []
    root = Path(root if root is not None else tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for entry in root.glob(DIR_PREFIX + "*"):
            pid_text = entry.name[len(DIR_PREFIX) :].split("-", 1)[0]
            if pid_text.isdigit() and not pid_alive(int(pid_text)) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(str(entry))
    return removed


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM without a handler of the program's own: remove the share directories now,
    then exit cleanly (``finally`` blocks, atexit and finalizers run; status 128 + 15)."""
    for path in list(_LIVE_DIRS):
        remove_share_dir(path)
    sys.exit(128 + signal.SIGTERM)


def _install_sigterm_handler() -> None:
    global _SIGTERM_INSTALLED
    if _SIGTERM_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(ValueError, OSError):
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _on_sigterm)
    _SIGTERM_INSTALLED = True
