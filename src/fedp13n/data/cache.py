"""The local cache of converted datasets: ``<cache root>/<key>/{train,test}/``.

Why: parsing h5, JSON or protobuf rows of the full EMNIST-62 takes minutes; the cache
format (:meth:`ClientData.save`, plain ``.npy`` files) loads in about a second and can be
memory-mapped by worker processes. A cache entry appears only complete: both splits are
written into a temporary sibling directory which is renamed at the end.

Integrity: every array file and the metadata carry a SHA-256 written with them and checked
on every load (:meth:`ClientData.load`), and the entry's ``manifest.json`` binds each
split's metadata digest to the split's name, so a ``train/`` and ``test/`` swapped (or one
split copied from another entry) is caught too. :func:`cached` rebuilds a corrupt or stale
entry from its source, with a :class:`CacheRebuiltWarning` saying so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

from fedp13n.data.client_data import ClientData
from fedp13n.data.resources import storage_error
from fedp13n.data.validate import CacheCorruptError, CacheStaleError

#: Environment variable overriding the default cache root.
CACHE_ENV = "FEDP13N_CACHE"
#: A cache entry's record of its splits: split name -> that split's meta.json digest.
MANIFEST = "manifest.json"
SPLITS = ("train", "test")


class CacheRebuiltWarning(UserWarning):
    """A cache entry was corrupt or stale and is being rebuilt from its source."""


def default_cache_dir() -> Path:
    """``$FEDP13N_CACHE`` if set, else ``~/.cache/fedp13n``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedp13n"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """The cache root to use: ``cache_dir`` if given, else :func:`default_cache_dir`."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def source_key(prefix: str, files: Iterable[str | os.PathLike]) -> str:
    """A cache key for local source files: ``<prefix>-<hash>``.

    The hash covers each file's absolute path, size and modification time, so editing or
    replacing a source file gives a new key (and a fresh conversion) automatically.
    """
    h = hashlib.blake2b(digest_size=8)
    for f in sorted(Path(p).resolve() for p in files):
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"{prefix}-{h.hexdigest()}"


def load_cached(
    root: str | os.PathLike, key: str, *, mmap: bool = False
) -> tuple[ClientData, ClientData] | None:
    """The cached ``(train, test)`` under ``root/key``, or None if absent or incomplete.

    A corrupt entry (checksum mismatch, or a split that is not the one recorded under its
    name in ``manifest.json``, e.g. ``train/`` and ``test/`` swapped) raises
    :class:`CacheCorruptError`, one of an older format :class:`CacheStaleError`: both tell
    how to rebuild it.
    """
    entry = Path(root) / key
    if not all((entry / split / "meta.json").is_file() for split in SPLITS):
        return None
    train = ClientData.load(entry / "train", mmap=mmap)
    test = ClientData.load(entry / "test", mmap=mmap)
    _check_manifest(entry)
    return train, test


def _split_digest(directory: Path) -> str | None:
    """The digest a split's meta.json records of itself (ids, sizes, file checksums)."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return meta.get("meta_sha256") if isinstance(meta, dict) else None


def _check_manifest(entry: Path) -> None:
    """Each split is the one recorded under its name when the entry was written."""
    rebuild = "delete the directory and load the dataset again to rebuild it."
    manifest_file = entry / MANIFEST
    if not manifest_file.is_file():
        raise CacheStaleError(
            f"cache entry {entry} has no {MANIFEST} (written by an older fedp13n, without "
            f"per-split records): {rebuild}"
        )
    try:
        manifest = json.loads(manifest_file.read_text())
        recorded = {split: manifest["splits"][split] for split in SPLITS}
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, TypeError, KeyError):
        raise CacheCorruptError(
            f"cache entry {entry} is corrupt: {MANIFEST} is not a record of its train and "
            f"test splits; {rebuild}"
        ) from None
    found = {split: _split_digest(entry / split) for split in SPLITS}
    if found == recorded:
        return
    if found == {"train": recorded["test"], "test": recorded["train"]}:
        raise CacheCorruptError(
            f"cache entry {entry} is corrupt: train/ and test/ were swapped (each holds the "
            f"split recorded under the other's name in {MANIFEST}); {rebuild}"
        )
    for split in SPLITS:
        if found[split] != recorded[split]:
            raise CacheCorruptError(
                f"cache entry {entry} is corrupt: {split}/ is not the {split} split recorded "
                f"in {MANIFEST} when the entry was written; {rebuild}"
            )


def save_cached(
    root: str | os.PathLike,
    key: str,
    train: ClientData,
    test: ClientData,
    *,
    source: dict | None = None,
) -> Path:
    """Write ``(train, test)`` to ``root/key`` atomically; ``source`` goes to source.json.

    A full disk, an unwritable root or a root under a regular file raise
    :class:`StorageError`; nothing partial is left behind.
    """
    entry = Path(root) / key
    tmp = entry.with_name(f".{key}.tmp-{os.getpid()}")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        train._save_files(tmp / "train")
        test._save_files(tmp / "test")
        (tmp / "source.json").write_text(json.dumps(source or {}, indent=1))
        splits = {split: _split_digest(tmp / split) for split in SPLITS}
        (tmp / MANIFEST).write_text(json.dumps({"splits": splits}, indent=1))
        if entry.exists():
            shutil.rmtree(entry)
        tmp.rename(entry)
    except OSError as e:
        raise storage_error(
            e,
            "write the cache entry",
            entry,
            f"Nothing was cached: free space, or choose a writable --cache-dir (or ${CACHE_ENV}).",
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def cached(
    root: str | os.PathLike,
    key: str,
    build: Callable[[], tuple[ClientData, ClientData]],
    *,
    mmap: bool = False,
    source: dict | None = None,
) -> tuple[ClientData, ClientData]:
    """Load ``root/key`` from the cache, or ``build()`` it, cache it and load it back.

    Loading back means the result is always the cached arrays (``.path`` set), so worker
    processes can memory-map the same files. An entry that fails its checksums, or of an
    older format, is rebuilt from the source, with a :class:`CacheRebuiltWarning`.
    """
    try:
        hit = load_cached(root, key, mmap=mmap)
    except (CacheCorruptError, CacheStaleError) as e:
        warnings.warn(f"{e} Rebuilding it from the source now.", CacheRebuiltWarning, stacklevel=2)
        hit = None
    except OSError:
        hit = None  # unreadable: rebuilt (writing it says why if that fails too)
    if hit is not None:
        return hit
    train, test = build()
    save_cached(root, key, train, test, source=source)
    del train, test  # the built arrays go before the cached ones load: one copy in memory
    hit = load_cached(root, key, mmap=mmap)
    assert hit is not None, f"cache entry {Path(root) / key} unreadable right after writing"
    return hit
