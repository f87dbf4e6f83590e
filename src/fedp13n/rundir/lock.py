"""One run per run directory: an exclusive lock held while a run writes into it.

An OS lock on ``<run_dir>/.lock``, which holds the owner's pid: ``fcntl.flock`` on Linux
and macOS, ``msvcrt.locking`` on Windows. The system releases it when the process ends,
however it ends (kill -9 included), so a stale lock never blocks a resume. On a platform
with neither, runs are not locked.

``.lock`` is opened without following a symlink and never truncated on opening; only a
plain file of its own is written. A ``.lock`` that is a symlink, a hard link to another
file, a folder or a device is refused (:class:`UnsafeLockFile`), whatever it points to
left untouched.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # Linux, macOS
    msvcrt = None

LOCK_FILE = ".lock"

#: Windows locks byte ranges, and a locked range cannot be read by other processes: the
#: lock is on one byte past the pid, so that a refused run can still say whose it is.
_MSVCRT_LOCK_OFFSET = 1 << 20

#: Open flags of ``.lock``: never through a symlink (O_NOFOLLOW where the OS has it), never
#: blocking on a FIFO, binary on Windows.
_NO_FOLLOW = (
    getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
)


class RunDirLocked(FileExistsError):
    """Another process is writing into the run directory."""


class UnsafeLockFile(FileExistsError):
    """``.lock`` is not a plain file of its own (a symlink, a hard link, a folder, ...)."""


def _unsafe(path: Path, what: str) -> UnsafeLockFile:
    return UnsafeLockFile(
        f"{path} is {what}, not fedp13n's lock file; it is left as it is: remove it "
        "(or choose another --output-dir) and rerun."
    )


def open_lock_file(path: Path, flags: int) -> int:
    """``os.open(path, flags)`` without following a symlink, checked to be a plain file
    with one link (else :class:`UnsafeLockFile`, nothing written)."""
    if path.is_symlink():  # also where the OS has no O_NOFOLLOW (Windows)
        raise _unsafe(path, "a symlink")
    try:
        fd = os.open(path, flags | _NO_FOLLOW, 0o644)
    except IsADirectoryError:
        raise _unsafe(path, "a directory") from None
    except OSError:
        if path.is_symlink():  # created between the check and the open (ELOOP)
            raise _unsafe(path, "a symlink") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        raise _unsafe(path, "not a plain file" if not stat.S_ISREG(st.st_mode) else "a hard link")
    return fd


def try_lock(fd: int, *, shared: bool = False) -> bool:
    """Take the lock on ``fd`` without waiting: True if taken, False if another holder has
    it. ``shared`` (a probe) where the OS has shared locks; Windows has exclusive ones."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    if msvcrt is not None:
        os.lseek(fd, _MSVCRT_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    return True  # no OS lock on this platform


def unlock(fd: int) -> None:
    """Release the lock taken by :func:`try_lock` (closing ``fd`` does it too, but Windows
    may take a while after a close)."""
    with contextlib.suppress(OSError):
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        elif msvcrt is not None:
            os.lseek(fd, _MSVCRT_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def read_owner(fd: int) -> str:
    """The pid written in the lock file (``?`` if none)."""
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 32).decode(errors="replace").strip() or "?"


@contextlib.contextmanager
def run_dir_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the run directory's lock (created if needed); ``RunDirLocked`` if taken,
    ``UnsafeLockFile`` if ``.lock`` is not a plain file of its own."""
    path = Path(run_dir) / LOCK_FILE
    fd = open_lock_file(path, os.O_RDWR | os.O_CREAT)
    try:
        if not try_lock(fd):
            raise RunDirLocked(
                f"{run_dir} is in use by another fedp13n run (pid {read_owner(fd)}); wait for "
                "it to finish or choose another --output-dir."
            ) from None
        try:
            os.ftruncate(fd, 0)  # only now, holding the lock: the owner's pid stays readable
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield path
        finally:
            unlock(fd)
    finally:
        os.close(fd)
