"""One entry point for every dataset: :func:`load_dataset` returns ``(train, test)``.

Sources of federated EMNIST (the data of Jiang et al. 2019, "Improving Federated Learning
Personalization via Model Agnostic Meta Learning", as distributed by TFF):

- ``"emnist"``: TFF's h5 files, from ``--data-dir`` or downloaded as
  ``fed_emnist.tar.bz2`` (``fed_emnist_digitsonly.tar.bz2`` with ``only_digits``);
- ``"emnist-sqlite"``: TFF's current ``emnist_all.sqlite.lzma``;
- ``"leaf"``: LEAF's FEMNIST JSON shards in ``--data-dir`` (``train/``, ``test/``);
- ``"synthetic"``: small generated data for tests and demos.

Federated Shakespeare (TFF's ``shakespeare.tar.bz2``, its h5 files in a directory, or
LEAF's JSON), preprocessed as TFF does (:mod:`fedp13n.data.shakespeare`):
:func:`fetch_shakespeare`, :func:`load_shakespeare_dir`, :func:`load_shakespeare_leaf`.

The first load converts to the local cache (:mod:`fedp13n.data.cache`); later loads
read the cache.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np

from fedp13n.data.cache import cached, resolve_cache_dir, source_key
from fedp13n.data.client_data import ClientData, file_sha256
from fedp13n.data.download import (
    DownloadError,
    decompress_lzma,
    download_file,
    remove_tree,
    safe_extract_tar,
)
from fedp13n.data.h5 import H5_PREFIX, h5_file_names, load_h5_dir
from fedp13n.data.leaf import load_leaf_dir
from fedp13n.data.names import DATASET_NAMES
from fedp13n.data.resources import StorageError, storage_error
from fedp13n.data.shakespeare import H5_NAMES as SHAKESPEARE_H5_NAMES
from fedp13n.data.shakespeare import (
    SEQUENCE_LENGTH,
    load_shakespeare_leaf_dir,
    read_shakespeare_dir,
)
from fedp13n.data.sqlite import load_sqlite
from fedp13n.data.validate import DataError, DataNotFoundError, check_counts
from fedp13n.utils.seeding import derive_rng

T = TypeVar("T")
TFF_BUCKET = "https://storage.googleapis.com/tff-datasets-public/"


@dataclass(frozen=True)
class Published:
    """What TFF publishes for one variant: where, its SHA-256, and its sizes."""

    url: str
    sha256: str | None
    counts: tuple[int, int, int]  # (clients, train examples, test examples)


#: TFF's h5 archives (hashes from TFF's former ``emnist.load_data``).
EMNIST_H5 = {
    False: Published(
        TFF_BUCKET + "fed_emnist.tar.bz2",
        "fe1ed5a502cea3a952eb105920bff8cffb32836b5173cb18a57a32c3606f3ea0",
        (3400, 671_585, 77_483),
    ),
    True: Published(
        TFF_BUCKET + "fed_emnist_digitsonly.tar.bz2",
        "55333deb8546765427c385710ca5e7301e16f4ed8b60c1dc5ae224b42bd5b14b",
        (3383, 341_873, 40_832),
    ),
}
#: TFF's current SQLite distribution (both variants in one file).
EMNIST_SQLITE_URL = TFF_BUCKET + "emnist_all.sqlite.lzma"
SQLITE_NAME = "emnist_all.sqlite"

Counts = tuple[int, int, int] | None | Literal["published"]


def _variant(only_digits: bool) -> str:
    return "10" if only_digits else "62"


def _url_tag(url: str | None, default_url: str, sha256: str | None = None) -> str:
    """``""`` for TFF's own URL, else ``"-url-<hash of url and sha256>"``.

    Why: data downloaded from a custom ``--url`` must never be cached (or its archive kept)
    under the names of TFF's pinned data, or a later default load would return it.
    """
    if url is None or url == default_url:
        return ""
    h = hashlib.blake2b(f"{url}\0{sha256 or ''}".encode(), digest_size=6).hexdigest()
    return f"-url-{h}"


def _pinned(
    pub: Published, url: str | None, sha256: str | None, root: Path, stem: str
) -> tuple[str, str | None, str, Path]:
    """``(url, sha256, tag, archive)`` of a published tar archive: ``sha256="published"``
    is TFF's for TFF's own URL (none for another), ``tag`` :func:`_url_tag`'s, ``archive``
    where it is kept (``<cache>/downloads/<stem><tag>.tar.bz2``)."""
    if sha256 == "published":
        sha256 = pub.sha256 if url is None else None
    tag = _url_tag(url, pub.url, sha256)
    return url or pub.url, sha256, tag, root / "downloads" / f"{stem}{tag}.tar.bz2"


def _published_counts(expected: Counts, only_digits: bool) -> tuple[int, int, int] | None:
    return EMNIST_H5[only_digits].counts if expected == "published" else expected


def fetch_emnist_h5(
    cache_dir: str | os.PathLike | None = None,
    *,
    only_digits: bool = False,
    url: str | None = None,
    sha256: str | None | Literal["published"] = "published",
    expected_counts: Counts = "published",
    progress: bool = True,
    mmap: bool = False,
) -> tuple[ClientData, ClientData]:
    """TFF's h5 EMNIST from the cache, downloading and converting it on first use.

    Steps on a cache miss: download the archive (unless already in ``<cache>/downloads``),
    extract it safely into a temporary directory, load and validate both h5 files, check
    the client and example counts (``expected_counts``; the published ones by default,
    None to skip), write the cache, delete the extracted files. The SHA-256 is checked
    only for TFF's own URL (``sha256="published"``) or when given.
    """
    root = resolve_cache_dir(cache_dir)
    pub, stem = EMNIST_H5[only_digits], H5_PREFIX[only_digits]
    url, sha256, tag, archive = _pinned(pub, url, sha256, root, stem)
    counts = _published_counts(expected_counts, only_digits)

    def build() -> tuple[ClientData, ClientData]:
        return _from_archive(
            root,
            archive,
            url,
            sha256,
            progress,
            h5_file_names(only_digits),
            lambda d: load_h5_dir(d, only_digits=only_digits),
            lambda result: check_counts(*result, counts, source=url),
        )

    return cached(
        root,
        f"emnist-{_variant(only_digits)}{tag}",
        build,
        mmap=mmap,
        source={"dataset": "emnist", "url": url, "sha256": sha256, "only_digits": only_digits},
    )


def _from_archive(
    root: Path,
    archive: Path,
    url: str,
    sha256: str | None,
    progress: bool,
    names: tuple[str, ...],
    load: Callable[[Path], T],
    check: Callable[[T], None],
) -> T:
    """``load(directory)`` of the files ``names`` in the tar archive at ``url``.

    The archive is kept in ``archive`` (``<cache>/downloads``; one there whose SHA-256
    differs from ``sha256`` is fetched afresh), extracted safely into a temporary directory
    under ``root`` (removed afterwards), loaded, then ``check``-ed. A corrupt archive, one
    without the files, or one whose data fails ``check`` is deleted, so the next run
    downloads it again; a full disk keeps it.
    """
    if archive.is_file() and sha256 is not None and file_sha256(archive) != sha256.lower():
        archive.unlink()  # not the pinned data (e.g. kept by an older fedp13n): refetch
    if not archive.is_file():
        download_file(url, archive, sha256=sha256, progress=progress)
    tmp = root / f".extract-{archive.name.removesuffix('.tar.bz2')}-{os.getpid()}"
    remove_tree(tmp)
    try:
        try:
            safe_extract_tar(archive, tmp)
        except StorageError:
            raise  # disk full or not writable: the archive is fine, keep it
        except DataError as e:
            archive.unlink(missing_ok=True)  # never keep a bad archive around
            raise DownloadError(
                f"{e} The archive was deleted: run the command again to download it "
                "afresh, or check --url."
            ) from None
        found = {p.name: p for p in tmp.rglob("*") if p.name in names and p.is_file()}
        missing = [n for n in names if n not in found]
        if missing:
            archive.unlink(missing_ok=True)
            raise DataNotFoundError(
                f"{url}: the archive has no {', '.join(missing)} (found "
                f"{sorted(p.name for p in tmp.rglob('*.h5')) or 'no h5 files'}). Check --url; "
                "the bad archive was deleted."
            )
        result = load(found[names[0]].parent)
        try:
            check(result)
        except DataError:
            archive.unlink(missing_ok=True)
            raise
        return result
    finally:
        remove_tree(tmp)


#: TFF's Shakespeare h5 archive: URL and SHA-256 of TFF's former ``shakespeare.load_data``
#: (``tensorflow/federated``, ``tensorflow_federated/python/simulation/datasets/
#: shakespeare.py``, ``tf.keras.utils.get_file('shakespeare.tar.bz2', ...,
#: file_hash=..., hash_algorithm='sha256')``; TFF 0.87 reads ``shakespeare.sqlite.lzma``
#: instead). Counts from the same docstring: 715 clients, 16,068 train and 2,356 test
#: *snippets* (not examples: a snippet gives one or more 80-character examples).
SHAKESPEARE_H5 = Published(
    TFF_BUCKET + "shakespeare.tar.bz2",
    "0285be9906cb5f268092eee4edeeacfc2af4574f2941f7cc2f08a321d7f5c707",
    (715, 16_068, 2_356),
)


def _shakespeare_key(sequence_length: int) -> str:
    return f"shakespeare-{sequence_length}"


def fetch_shakespeare(
    cache_dir: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    sha256: str | None | Literal["published"] = "published",
    expected_counts: tuple[int, int, int] | None | Literal["published"] = "published",
    sequence_length: int = SEQUENCE_LENGTH,
    progress: bool = True,
    mmap: bool = False,
) -> tuple[ClientData, ClientData]:
    """TFF's federated Shakespeare (``shakespeare.tar.bz2``) from the cache, downloading
    and preprocessing it (:mod:`fedp13n.data.shakespeare`) on first use.

    As :func:`fetch_emnist_h5`: the archive is kept in ``<cache>/downloads``, its SHA-256
    checked for TFF's own URL (or when given), extracted safely, both h5 files
    preprocessed, the (clients, train snippets, test snippets) checked against
    ``expected_counts`` (TFF's published ones by default, None to skip) and cached.
    """
    root = resolve_cache_dir(cache_dir)
    url, sha256, tag, archive = _pinned(SHAKESPEARE_H5, url, sha256, root, "shakespeare")
    counts = SHAKESPEARE_H5.counts if expected_counts == "published" else expected_counts

    def build() -> tuple[ClientData, ClientData]:
        train, test, _ = _from_archive(
            root,
            archive,
            url,
            sha256,
            progress,
            SHAKESPEARE_H5_NAMES,
            lambda d: read_shakespeare_dir(d, sequence_length=sequence_length),
            lambda r: check_counts(r[0], r[1], counts, source=url, sizes=r[2], unit="snippets"),
        )
        return train, test

    return cached(
        root,
        _shakespeare_key(sequence_length) + tag,
        build,
        mmap=mmap,
        source={
            "dataset": "shakespeare",
            "url": url,
            "sha256": sha256,
            "sequence_length": sequence_length,
        },
    )


def load_shakespeare_dir(
    data_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    *,
    sequence_length: int = SEQUENCE_LENGTH,
    mmap: bool = False,
) -> tuple[ClientData, ClientData]:
    """TFF's ``shakespeare_{train,test}.h5`` in ``data_dir``, preprocessed and cached (the
    cache key follows the files' paths, sizes and times, as for EMNIST's h5 directory)."""
    d = Path(data_dir)
    return _cached_files(
        resolve_cache_dir(cache_dir), d, f"{_shakespeare_key(sequence_length)}-h5",
        [d / n for n in SHAKESPEARE_H5_NAMES],
        lambda: read_shakespeare_dir(d, sequence_length=sequence_length)[:2], "shakespeare", mmap,
    )  # fmt: skip


def _cached_files(
    root: Path, d: Path, key: str, files: list[Path], build: Callable, dataset: str, mmap: bool
) -> tuple[ClientData, ClientData]:
    """``build()``'s data from the files of folder ``d``, cached under ``root`` with a key
    that follows ``key`` and the files' paths, sizes and times. Without ``files`` (or with
    one missing) ``build()`` runs uncached: the loader says precisely what is missing."""
    if not files or not all(f.is_file() for f in files):
        return build()
    return cached(
        root, source_key(key, files), build, mmap=mmap,
        source={"dataset": dataset, "data_dir": str(d.resolve())},
    )  # fmt: skip


def _json_shards(d: Path) -> list[Path]:
    """A LEAF folder's ``train/`` then ``test/`` JSON shards, each in name order."""
    return sorted(d.glob("train/*.json")) + sorted(d.glob("test/*.json"))


def load_shakespeare_leaf(
    data_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    *,
    sequence_length: int = SEQUENCE_LENGTH,
    mmap: bool = False,
) -> tuple[ClientData, ClientData]:
    """LEAF's Shakespeare JSON (``train/``, ``test/`` shards) in ``data_dir``, cached
    (see :func:`fedp13n.data.shakespeare.leaf_window_to_example` for the mapping)."""
    d = Path(data_dir)
    return _cached_files(
        resolve_cache_dir(cache_dir), d, f"{_shakespeare_key(sequence_length)}-leaf",
        _json_shards(d),
        lambda: load_shakespeare_leaf_dir(d, sequence_length=sequence_length),
        "shakespeare-leaf", mmap,
    )  # fmt: skip


def fetch_emnist_sqlite(
    cache_dir: str | os.PathLike | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    only_digits: bool = False,
    url: str | None = None,
    expected_counts: Counts = "published",
    progress: bool = True,
    mmap: bool = False,
) -> tuple[ClientData, ClientData]:
    """TFF's ``emnist_all.sqlite`` EMNIST from the cache, converting it on first use.

    With ``data_dir``, read ``emnist_all.sqlite`` (or ``.sqlite.lzma``) found there (a
    local file may be a subset: no count check); otherwise download ``url`` (TFF's by
    default) into ``<cache>/downloads`` and check ``expected_counts``.
    """
    root = resolve_cache_dir(cache_dir)
    counts = _published_counts(expected_counts, only_digits) if data_dir is None else None
    if data_dir is not None:
        d = Path(data_dir)
        candidates = [d / SQLITE_NAME, d / (SQLITE_NAME + ".lzma")]
        src = next((p for p in candidates if p.is_file()), None)
        if src is None:
            raise DataNotFoundError(
                f"{d}: no {SQLITE_NAME} or {SQLITE_NAME}.lzma; --data-dir must hold TFF's "
                "SQLite EMNIST file."
            )
        key = source_key(f"sqlite-{_variant(only_digits)}", [src])
    else:
        url, src, key = _sqlite_download(root, url, only_digits)

    def build() -> tuple[ClientData, ClientData]:
        if data_dir is None and not src.is_file():
            download_file(url, src, progress=progress)
        return _read_sqlite(root, src, only_digits, counts, progress, ours=data_dir is None)

    return cached(
        root,
        key,
        build,
        mmap=mmap,
        source={"dataset": "emnist-sqlite", "from": str(src), "only_digits": only_digits},
    )


def _sqlite_download(root: Path, url: str | None, only_digits: bool) -> tuple[str, Path, str]:
    """``(url, where its download is kept, cache key)`` of TFF's SQLite file (or ``url``'s)."""
    tag = _url_tag(url, EMNIST_SQLITE_URL)
    where = root / "downloads" / f"emnist_all{tag}.sqlite.lzma"
    return url or EMNIST_SQLITE_URL, where, f"emnist-sqlite-{_variant(only_digits)}{tag}"


def _read_sqlite(
    root: Path,
    src: Path,
    only_digits: bool,
    counts: tuple[int, int, int] | None,
    progress: bool,
    *,
    ours: bool,
) -> tuple[ClientData, ClientData]:
    """``(train, test)`` of the SQLite file ``src`` (an ``.lzma`` one decompressed into a
    temporary file under ``root``), checked against ``counts``. ``ours``: ``src`` is our
    download, deleted when corrupt or not the expected data, so the next run fetches it
    afresh (a full disk is a StorageError: ``src`` is kept)."""
    db, tmp_db = src, None
    if src.suffix == ".lzma":
        tmp_db = root / f".{SQLITE_NAME}.{os.getpid()}"
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise storage_error(
                e, "create the cache directory", root, "Choose a writable --cache-dir."
            ) from None
        try:
            db = decompress_lzma(src, tmp_db, progress=progress)
        except DownloadError:
            if ours:
                src.unlink(missing_ok=True)
            raise
    try:
        train, test = load_sqlite(db, only_digits=only_digits)
        try:
            check_counts(train, test, counts, source=str(src))
        except DataError:
            if ours:
                src.unlink(missing_ok=True)
            raise
        return train, test
    finally:
        if tmp_db is not None:
            tmp_db.unlink(missing_ok=True)


def select_clients(
    train: ClientData, test: ClientData, num_clients: int | None, seed: int
) -> tuple[ClientData, ClientData]:
    """Keep ``num_clients`` clients drawn without replacement (derived from ``seed``).

    The kept clients stay in dataset order, so the result does not depend on how the
    draw is implemented beyond the chosen set.
    """
    if num_clients is None or num_clients == len(train):
        return train, test
    if not 1 <= num_clients <= len(train):
        raise DataError(
            f"num_clients={num_clients}, but the dataset has {len(train)} clients: choose "
            f"1..{len(train)} (or leave it unset for all)."
        )
    rng = derive_rng(seed, "select_clients")
    keep = np.sort(rng.choice(len(train), size=num_clients, replace=False))
    ids = [train.client_ids[i] for i in keep]
    return train.subset(ids), test.subset(ids)


def download_notice(
    dataset: str,
    data_dir: str | os.PathLike | None,
    cache_dir: str | os.PathLike | None,
    url: str | None = None,
    only_digits: bool = False,
) -> str | None:
    """The line to say before ``load_dataset`` downloads (None: the data is cached, local or
    generated): a large download must not start unannounced (``fedp13n data`` and ``run``)."""
    if data_dir is not None or dataset not in ("emnist", "emnist-sqlite", "shakespeare"):
        return None
    root = resolve_cache_dir(cache_dir)
    variant = _variant(only_digits)
    if dataset == "shakespeare":
        source, _, tag, archive = _pinned(SHAKESPEARE_H5, url, "published", root, "shakespeare")
        key, what = _shakespeare_key(SEQUENCE_LENGTH) + tag, "Shakespeare"
    elif dataset == "emnist":
        pub, stem = EMNIST_H5[only_digits], H5_PREFIX[only_digits]
        source, _, tag, archive = _pinned(pub, url, "published", root, stem)
        key = f"emnist-{variant}{tag}"
        what = f"EMNIST-{variant}" + (" (~200 MB)" if not only_digits and not tag else "")
    else:
        source, archive, key = _sqlite_download(root, url, only_digits)
        what = "EMNIST (TFF's SQLite file)"
    cached = all((root / key / part / "meta.json").is_file() for part in ("train", "test"))
    if cached or archive.is_file():
        return None
    return f"downloading {what} from {source} to {root}; pass --data-dir to use local files"


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    url: str | None = None,
    only_digits: bool = False,
    num_clients: int | None = None,
    seed: int = 0,
    progress: bool = True,
    mmap: bool = False,
) -> tuple[ClientData, ClientData]:
    """Load a federated dataset as ``(train, test)`` ClientData with the same client ids.

    ``num_clients`` keeps a seeded random subset of the clients (for real data) or sets
    how many clients to generate (``"synthetic"``). ``mmap`` memory-maps the cache.
    Unknown names and bad or missing data raise :class:`DataError` with what to do.
    """
    if name not in DATASET_NAMES:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}.")
    for key, folder in (("data_dir", data_dir), ("cache_dir", cache_dir)):
        if folder is not None and not isinstance(folder, (str, os.PathLike)):
            raise DataError(f"{key} must be a folder (a str or Path), got {type(folder).__name__}.")
        if folder is not None and not str(folder).strip():  # Path("") would be "."
            raise DataError(f"{key} is empty; give a folder, or None for the default.")
    if url is not None and (data_dir is not None or name == "synthetic"):
        where = "reads --data-dir" if data_dir is not None else "is generated"
        raise DataError(f"--url downloads a dataset, but {name!r} {where}; drop --url.")
    if name == "synthetic":
        return _synthetic(num_clients, only_digits, seed)
    if only_digits and name.startswith("shakespeare"):
        raise DataError(f"only_digits selects EMNIST's digits; drop it for {name!r}.")
    root = resolve_cache_dir(cache_dir)
    if data_dir is not None and Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise DataNotFoundError(
            f"--data-dir {data_dir} is a file; it must be the directory that holds the "
            "dataset's files."
        )
    if name == "shakespeare" and data_dir is None:
        train, test = fetch_shakespeare(root, url=url, progress=progress, mmap=mmap)
    elif name == "shakespeare":
        train, test = load_shakespeare_dir(data_dir, root, mmap=mmap)
    elif name == "shakespeare-leaf":
        if data_dir is None:
            raise DataNotFoundError(
                "dataset 'shakespeare-leaf' needs --data-dir (LEAF's train/ and test/ JSON)."
            )
        train, test = load_shakespeare_leaf(data_dir, root, mmap=mmap)
    elif name == "emnist" and data_dir is None:
        train, test = fetch_emnist_h5(
            root, only_digits=only_digits, url=url, progress=progress, mmap=mmap
        )
    elif name == "emnist":
        train, test = _emnist_h5_dir(root, Path(data_dir), only_digits, mmap)
    elif name == "emnist-sqlite":
        train, test = fetch_emnist_sqlite(
            root,
            data_dir=data_dir,
            only_digits=only_digits,
            url=url,
            progress=progress,
            mmap=mmap,
        )
    else:
        train, test = _leaf(root, data_dir, only_digits, mmap)
    return select_clients(train, test, num_clients, seed)


def _synthetic(
    num_clients: int | None, only_digits: bool, seed: int
) -> tuple[ClientData, ClientData]:
    try:
        from fedp13n.data.synthetic import make_synthetic_emnist
    except ImportError as e:
        raise DataError(f"the synthetic dataset is not available ({e}).") from None
    kwargs: dict = {} if num_clients is None else {"num_clients": num_clients}
    if only_digits:
        kwargs["num_classes"] = 10
    try:
        return make_synthetic_emnist(**kwargs, seed=seed)
    except ValueError as e:
        raise DataError(f"synthetic dataset: {e}") from None


def _emnist_h5_dir(
    root: Path, d: Path, only_digits: bool, mmap: bool
) -> tuple[ClientData, ClientData]:
    """TFF's EMNIST HDF5 files in ``d`` (cached under ``root``)."""
    return _cached_files(
        root, d, f"h5-{_variant(only_digits)}", [d / n for n in h5_file_names(only_digits)],
        lambda: load_h5_dir(d, only_digits=only_digits), "emnist", mmap,
    )  # fmt: skip


def _leaf(
    root: Path, data_dir: str | Path | None, only_digits: bool, mmap: bool
) -> tuple[ClientData, ClientData]:
    """A LEAF FEMNIST directory's JSON shards (cached under ``root``)."""
    if data_dir is None:
        raise DataError(
            "the 'leaf' dataset needs --data-dir: a LEAF FEMNIST directory with train/ "
            "and test/ JSON shards."
        )
    if only_digits:
        raise DataError(
            "--only-digits is not available for 'leaf' (LEAF's FEMNIST is 62-class); "
            "use 'emnist' or 'emnist-sqlite'."
        )
    d = Path(data_dir)
    return _cached_files(root, d, "leaf", _json_shards(d), lambda: load_leaf_dir(d), "leaf", mmap)
