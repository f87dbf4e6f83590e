"""What keeps a run directory trustworthy: the digest of its ``config.toml`` and one clear
error for a write that fails on a full disk.

``config.toml`` starts with a comment holding the SHA-256 of the settings below it, written
by the run: ``--resume`` compares the two, so a hand-edited file is refused rather than
passed through the resume rules (which compare against that very file). A file without
the comment (written before it existed) is not checked.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

_DIGEST_LINE = re.compile(rb"^# fedp13n sha256 ([0-9a-f]{64})\b[^\n]*\n")

#: errno values that mean the disk (or the user's quota) is full.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def config_text_with_digest(body: str) -> str:
    """``body`` (a run's resolved settings as TOML) under a comment holding its SHA-256."""
    return (
        f"# fedp13n sha256 {_digest(body.encode())} of the settings below (written by the run;"
        " --resume refuses an edited file: edit a copy and pass it to a new run with --config)\n"
        + body
    )


def config_edited(path: str | os.PathLike) -> bool:
    """Whether a run's ``config.toml`` differs from what the run wrote (False for a file
    without the digest comment: nothing to compare with)."""
    data = Path(path).read_bytes()
    m = _DIGEST_LINE.match(data)
    return m is not None and _digest(data[m.end() :]) != m.group(1).decode()


class NoSpaceError(OSError):
    """Writing a run-directory file failed on a full disk; the message names the file and
    the fix (what was complete before is kept: the run resumes)."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def __str__(self) -> str:
        return (
            f"no space left on device while writing {self.filename}; free space and rerun "
            "with --resume."
        )


def is_torch_write_failure(e: BaseException) -> bool:
    """torch.save's report of a failed write (a full disk): ``RuntimeError: [enforce fail
    at inline_container.cc] ... file write failed``, not the OSError it is."""
    text = str(e)
    return isinstance(e, RuntimeError) and ("inline_container" in text or "write failed" in text)


_TEMPORARY = re.compile(r"^\.(.+)\.tmp-\d+$")  # fedp13n.utils.fs.atomic_writer's names


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk while writing ``path`` (or the file the error names) into a
    :class:`NoSpaceError`; other errors pass unchanged."""
    try:
        yield
    except NoSpaceError:
        raise
    except (OSError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not is_torch_write_failure(e):
            raise
        if isinstance(e, OSError) and e.errno not in DISK_FULL_ERRNOS:
            raise
        name = getattr(e, "filename", None)
        if name:
            name = Path(name)
            m = _TEMPORARY.match(name.name)
            name = name.with_name(m.group(1)) if m else name
        raise NoSpaceError(name or path) from None
