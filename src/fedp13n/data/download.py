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
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

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


def download_file(
    url: str,
    target: str | os.PathLike,
    *,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``target`` atomically; return ``target``.

    The bytes go to ``<target>.part`` and are renamed to ``target`` only when the transfer
    is complete (as many bytes as the server announced) and, with ``sha256``, the digest
    matches. On any failure the partial file is removed and :class:`DownloadError` raised.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    received = 0
    done = False
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with _progress(f"Downloading {target.name}", total, progress) as advance:
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    advance(len(chunk))
        if total is not None and received != total:
            raise DownloadError(
                f"download of {url} was interrupted: got {received} of {total} bytes. "
                "Nothing was cached; run the command again."
            )
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise DownloadError(
                f"download of {url} is corrupt: SHA-256 {digest.hexdigest()} differs from "
                f"the expected {sha256}. Nothing was cached; run the command again, or pass "
                "a trusted --url."
            )
        os.replace(part, target)
        done = True
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        if isinstance(e, DownloadError):
            raise
        if isinstance(e, urllib.error.HTTPError):
            reason = f"HTTP {e.code} {e.reason}"
        else:
            reason = getattr(e, "reason", None) or repr(e)
        raise DownloadError(
            f"download of {url} failed or was interrupted after {received} bytes ({reason}). "
            "Nothing was cached; check the network or the URL (--url) and run the "
            "command again."
        ) from None
    finally:
        if not done:
            part.unlink(missing_ok=True)
    return target


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
    archive, root = Path(archive), Path(target_dir)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(m, root)
            tar.extractall(root, members=members, filter="data")
    except DownloadError as e:
        raise DownloadError(f"{archive} is unsafe: {e}; nothing was extracted.") from None
    except (tarfile.TarError, EOFError, OSError, lzma.LZMAError) as e:
        detail = " ".join(str(e).split())
        raise DownloadError(f"{archive} is corrupt or not a tar archive ({detail}).") from None
    return [root / m.name for m in members if m.isfile()]


def decompress_lzma(
    source: str | os.PathLike, target: str | os.PathLike, *, progress: bool = True
) -> Path:
    """Decompress an ``.lzma``/``.xz`` file to ``target`` (via ``<target>.part``)."""
    source, target = Path(source), Path(target)
    part = target.with_name(target.name + ".part")
    try:
        with (
            lzma.open(source, "rb") as src,
            open(part, "wb") as out,
            _progress(f"Decompressing {source.name}", None, progress) as advance,
        ):
            while True:
                chunk = src.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                advance(len(chunk))
    except (lzma.LZMAError, EOFError, OSError) as e:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{source} is corrupt or not LZMA-compressed ({e}). Delete it and download "
            "again (fedp13n data download)."
        ) from None
    os.replace(part, target)
    return target


def remove_tree(path: str | os.PathLike) -> None:
    """Remove a directory tree if it exists (temporary extraction directories)."""
    shutil.rmtree(path, ignore_errors=True)
