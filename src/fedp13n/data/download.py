"""Fetch dataset archives safely: stream to ``<target>.part``, verify, then rename.

Why so careful: the federated EMNIST archives are hundreds of megabytes. A transfer cut
short, a proxy's error page or a tampered archive must never leave something that looks
like a valid cache; so a download only takes its final name once it is complete (length
and, when known, SHA-256 checked), and extraction refuses any tar member that would land
outside the target directory, links and special files.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import lzma
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from fedp13n.data.validate import DataError

_CHUNK = 1 << 20


class DownloadError(DataError):
    """A download, decompression or extraction failed; the message says what to do."""


@contextlib.contextmanager
def _progress(description: str, total: int | None, enabled: bool) -> Iterator:
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.update(task, advance=n)


#: Environment variables overriding the download limits (seconds, bytes per second).
TIMEOUT_ENV = "FEDP13N_DOWNLOAD_TIMEOUT"
MIN_RATE_ENV = "FEDP13N_DOWNLOAD_MIN_RATE"
DEADLINE_ENV = "FEDP13N_DOWNLOAD_DEADLINE"
#: Defaults: a read waits at most 60 s; over any 60 s the transfer must average 1 KiB/s;
#: no overall deadline (a slow but moving transfer of a large archive may take long).
DEFAULT_TIMEOUT = 60.0
DEFAULT_MIN_RATE = 1024.0
DEFAULT_STALL_WINDOW = 60.0


class _WriteFailed(Exception):
    """Wraps the OSError of writing the local file (not of the network)."""

    def __init__(self, error: OSError) -> None:
        self.error = error


def _limit(value: float | None, env: str, default: float | None) -> float | None:
    if value is not None:
        return value
    text = os.environ.get(env)
    if not text:
        return default
    try:
        v = float(text)
    except ValueError:
        raise DataError(f"${env}={text!r} is not a number of seconds or bytes/s.") from None
    return v if v > 0 else None  # 0 switches the rule off


def download_file(
    url: str,
    target: str | os.PathLike,
    *,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float | None = None,
    min_rate: float | None = None,
    stall_window: float = DEFAULT_STALL_WINDOW,
    deadline: float | None = None,
) -> Path:
    """Download ``url`` to ``target`` atomically; return ``target``.

    The bytes go to ``<target>.part`` and are renamed to ``target`` only when the transfer
    is complete (as many bytes as the server announced) and, with ``sha256``, the digest
    matches. On any failure the partial file is removed and :class:`DownloadError` raised
    (:class:`~fedp13n.data.resources.StorageError` when the local disk is full or not
    writable).

    Three limits keep a dead or trickling server from hanging the caller: ``timeout``
    seconds without any byte (per read; ``$FEDP13N_DOWNLOAD_TIMEOUT``, default 60),
    an average below ``min_rate`` bytes/s over any ``stall_window`` seconds
    (``$FEDP13N_DOWNLOAD_MIN_RATE``, default 1 KiB/s over 60 s), and an overall
    ``deadline`` in seconds (``$FEDP13N_DOWNLOAD_DEADLINE``, default none).
    """
    from fedp13n.data.resources import storage_error

    timeout = _limit(timeout, TIMEOUT_ENV, DEFAULT_TIMEOUT)
    min_rate = _limit(min_rate, MIN_RATE_ENV, DEFAULT_MIN_RATE)
    deadline = _limit(deadline, DEADLINE_ENV, None)
    target = Path(target)
    part = target.with_name(target.name + ".part")
    hint = "Nothing was kept: free space, or choose a writable --cache-dir."
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        out = open(part, "wb")  # noqa: SIM115 (closed below)
    except OSError as e:
        raise storage_error(e, "write the download", part, hint) from None
    transfer = _Transfer(url, out, deadline, min_rate, stall_window)
    done = False
    try:
        with out, urllib.request.urlopen(url, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            read = getattr(resp, "read1", resp.read)  # read1: whatever has arrived
            with _progress(f"Downloading {target.name}", total, progress) as advance:
                while chunk := read(_CHUNK):
                    transfer.add(chunk)
                    advance(len(chunk))
                    transfer.check_limits()
        transfer.check_complete(total, sha256)
        try:
            os.replace(part, target)
        except OSError as e:
            raise _WriteFailed(e) from None
        done = True
    except _WriteFailed as w:
        raise storage_error(w.error, "write the download", part, hint) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        if isinstance(e, DownloadError):
            raise
        raise DownloadError(
            f"download of {url} failed or was interrupted after {transfer.received} bytes "
            f"({_failure_reason(e, timeout)}). Nothing was cached; check the network or the "
            "URL (--url) and run the command again."
        ) from None
    finally:
        if not done:
            part.unlink(missing_ok=True)
    return target


class _Transfer:
    """The bytes of one download as they arrive: written to ``out``, hashed and counted,
    and held to the overall ``deadline`` and to ``min_rate`` over every ``stall_window``."""

    def __init__(
        self,
        url: str,
        out: BinaryIO,
        deadline: float | None,
        min_rate: float | None,
        stall_window: float,
    ) -> None:
        self.url, self.out = url, out
        self.deadline, self.min_rate, self.stall_window = deadline, min_rate, stall_window
        self.digest = hashlib.sha256()
        self.received = 0
        self.started = time.monotonic()
        self.window_start, self.window_bytes = self.started, 0

    def add(self, chunk: bytes) -> None:
        try:
            self.out.write(chunk)
        except OSError as e:
            raise _WriteFailed(e) from None
        self.digest.update(chunk)
        self.received += len(chunk)

    def check_limits(self) -> None:
        """A DownloadError past the deadline, or when the last window was too slow."""
        now, url, received = time.monotonic(), self.url, self.received
        if self.deadline is not None and now - self.started > self.deadline:
            raise DownloadError(
                f"download of {url} exceeded the deadline of {self.deadline:g} s "
                f"({received} bytes received). Nothing was cached; retry, or "
                f"raise ${DEADLINE_ENV}."
            )
        if self.min_rate is not None and now - self.window_start >= self.stall_window:
            rate = (received - self.window_bytes) / (now - self.window_start)
            if rate < self.min_rate:
                raise DownloadError(
                    f"download of {url} stalled: {rate:.0f} bytes/s over the "
                    f"last {now - self.window_start:.1f} s, below the minimum of "
                    f"{self.min_rate:g} bytes/s ({received} bytes received). Nothing "
                    f"was cached; retry later, or lower ${MIN_RATE_ENV}."
                )
            self.window_start, self.window_bytes = now, received

    def check_complete(self, total: int | None, sha256: str | None) -> None:
        """A DownloadError when fewer bytes came than announced or the digest differs."""
        url, received = self.url, self.received
        if total is not None and received != total:
            raise DownloadError(
                f"download of {url} was interrupted: got {received} of {total} bytes. "
                "Nothing was cached; run the command again."
            )
        if sha256 is not None and self.digest.hexdigest() != sha256.lower():
            raise DownloadError(
                f"download of {url} is corrupt: SHA-256 {self.digest.hexdigest()} differs "
                f"from the expected {sha256}. Nothing was cached; run the command again, or "
                "pass a trusted --url."
            )


def _failure_reason(e: Exception, timeout: float | None) -> str:
    """Why a download failed, in a few words."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError):
        return f"no data for {timeout:g} s; raise ${TIMEOUT_ENV} for a slow network"
    return getattr(e, "reason", None) or repr(e)


def _check_member(member: tarfile.TarInfo, root: Path) -> None:
    name = member.name
    dest = (root / name).resolve()
    if os.path.isabs(name) or ".." in Path(name).parts or not dest.is_relative_to(root):
        raise DownloadError(f"archive member {name!r} would be written outside {root}")
    if not (member.isfile() or member.isdir()):
        raise DownloadError(
            f"archive member {name!r} is a link or special file; only regular files and "
            "directories are accepted"
        )


def safe_extract_tar(archive: str | os.PathLike, target_dir: str | os.PathLike) -> list[Path]:
    """Extract a (possibly compressed) tar archive into ``target_dir``; return the files.

    Every member is checked first (no absolute paths, no ``..``, no links or devices), so a
    hostile archive is rejected before anything is written; extraction then also uses
    tarfile's ``"data"`` filter. Raises :class:`DownloadError` for a corrupt or unsafe
    archive.
    """
    from fedp13n.data.resources import storage_error

    archive, root = Path(archive), Path(target_dir)
    hint = (
        "The archive is fine and was kept; free space (or choose another --cache-dir) and "
        "run the command again."
    )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise storage_error(e, "extract into", root, hint) from None
    root = root.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(m, root)
            tar.extractall(root, members=members, filter="data")
    except DownloadError as e:
        raise DownloadError(f"{archive} is unsafe: {e}; nothing was extracted.") from None
    except (OSError, tarfile.TarError, EOFError, lzma.LZMAError) as e:
        if isinstance(e, OSError) and e.errno is not None:  # a refused write, not bad data
            raise storage_error(e, f"extract {archive.name} into", root, hint) from None
        detail = " ".join(str(e).split())
        raise DownloadError(f"{archive} is corrupt or not a tar archive ({detail}).") from None
    return [root / m.name for m in members if m.isfile()]


def decompress_lzma(
    source: str | os.PathLike, target: str | os.PathLike, *, progress: bool = True
) -> Path:
    """Decompress an ``.lzma``/``.xz`` file to ``target`` (via ``<target>.part``).

    A corrupt source raises :class:`DownloadError`; a full or unwritable disk
    :class:`~fedp13n.data.resources.StorageError` (the source is fine). Nothing partial
    is left either way.
    """
    from fedp13n.data.resources import storage_error

    source, target = Path(source), Path(target)
    part = target.with_name(target.name + ".part")
    try:
        with (
            lzma.open(source, "rb") as src,
            open(part, "wb") as out,
            _progress(f"Decompressing {source.name}", None, progress) as advance,
        ):
            while chunk := src.read(_CHUNK):
                out.write(chunk)
                advance(len(chunk))
    except (lzma.LZMAError, EOFError, OSError) as e:
        part.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno is not None:
            raise storage_error(
                e,
                f"decompress {source.name} to",
                part,
                f"{source} is fine and was kept; free space and run the command again.",
            ) from None
        raise DownloadError(
            f"{source} is corrupt or not LZMA-compressed ({e}). Delete it and download "
            "again (fedp13n data download)."
        ) from None
    os.replace(part, target)
    return target


def remove_tree(path: str | os.PathLike) -> None:
    """Remove a directory tree if it exists (temporary extraction directories)."""
    shutil.rmtree(path, ignore_errors=True)
