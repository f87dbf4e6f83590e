"""Memory and storage checks of the data layer: fail fast, with a message, not a traceback.

Why: a data set that cannot fit in memory should be refused before anything is allocated
(a swapping machine or the OOM killer is no error message), and a full or unwritable disk
is the user's to fix, not a corrupt archive nor a traceback. Each helper turns the
condition into a :class:`~fedp13n.data.validate.DataError` naming the path and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from fedp13n.data.validate import DataError

_GIB = 1 << 30

#: errno values meaning "the disk (or the user's quota) is full".
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class StorageError(DataError):
    """Writing data (a download, an extraction, the cache) failed: disk full, unwritable
    or a path that is not a directory. Whatever was complete before is kept."""


class MemoryLimitError(DataError):
    """The data would not fit in the memory available; refused before allocating it."""


def _blocking_file(path: Path) -> Path | None:
    """The first existing ancestor (or ``path`` itself) that is not a directory."""
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return None if p.is_dir() else p
    return None


def os_error_reason(e: OSError, path: str | os.PathLike | None = None) -> str:
    """A short reason for an OSError, in words a user can act on."""
    text = e.strerror or str(e)
    if e.errno in DISK_FULL_ERRNOS:
        return f"the disk is full ({text})"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied ({text})"
    if e.errno == errno.EROFS:
        return f"the file system is read-only ({text})"
    if e.errno in (errno.ENOTDIR, errno.EEXIST) and path is not None:
        blocker = _blocking_file(Path(path))
        if blocker is not None:
            return f"{blocker} is a regular file, not a directory"
    if e.errno == errno.EISDIR:
        return f"it is a directory, not a file ({text})"
    return text


def storage_error(e: OSError, action: str, path: str | os.PathLike, hint: str) -> StorageError:
    """``StorageError("cannot <action> <path>: <reason>. <hint>")``."""
    return StorageError(f"cannot {action} {path}: {os_error_reason(e, path)}. {hint}")


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except (OSError, ValueError):
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) is not a number


def available_memory() -> int | None:
    """Bytes this process can still allocate: the least of the system's ``MemAvailable``,
    the cgroup limit (v2 or v1) minus current use, and ``RLIMIT_AS``; None if unknown."""
    limits: list[int] = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    if not limits:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            limits.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        limit = _read_int(limit_file)
        if limit is not None and limit < 1 << 60:
            limits.append(max(0, limit - (_read_int(usage_file) or 0)))
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY and soft > 0:
            limits.append(soft)
    except (ImportError, OSError, ValueError):
        pass
    return min(limits) if limits else None


def format_bytes(n: float) -> str:
    if n >= _GIB:
        return f"{n / _GIB:.1f} GiB"
    return f"{n / (1 << 20):.1f} MiB"


def check_memory(needed: int, what: str, hint: str, *, error: type[Exception] = MemoryLimitError):
    """Raise ``error`` when ``needed`` bytes exceed the memory available."""
    avail = available_memory()
    if avail is not None and needed > avail:
        raise error(
            f"{what} needs about {format_bytes(needed)} of memory, but only "
            f"{format_bytes(avail)} is available. {hint}"
        )
