"""One run per run directory: an exclusive lock held while a run writes into it.

``fcntl.flock`` on ``<run_dir>/.lock``: the kernel releases it when the process ends,
however it ends (kill -9 included), so a stale lock never blocks a resume.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".lock"


class RunDirLocked(FileExistsError):
    """Another process is writing into the run directory."""


@contextlib.contextmanager
def run_dir_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the run directory's lock (created if needed); ``RunDirLocked`` if taken."""
    path = Path(run_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise RunDirLocked(
                f"{run_dir} is in use by another fedp13n run (pid {owner}); wait for it to "
                "finish or choose another --output-dir."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
