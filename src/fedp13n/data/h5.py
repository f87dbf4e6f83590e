"""Read TFF's federated EMNIST h5 files (``fed_emnist_{train,test}.h5``).

Layout (TFF's ``HDF5ClientData``, the files of ``fed_emnist.tar.bz2`` used by Jiang et
al. 2019, "Improving Federated Learning Personalization via Model Agnostic Meta
Learning"): ``examples/<client_id>/pixels`` float32 (n, 28, 28) with 1.0 the background,
``examples/<client_id>/label`` int32 (n,). The digits-only variant has the same layout in
``fed_emnist_digitsonly_{train,test}.h5``.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from fedp13n.data.client_data import ClientData
from fedp13n.data.resources import check_memory
from fedp13n.data.validate import (
    NUM_CLASSES,
    NUM_DIGIT_CLASSES,
    DataFormatError,
    PixelAccumulator,
    align_train_test,
    check_client,
    check_data_file,
    tff_pair,
)

#: File name prefix of each variant inside TFF's archives.
H5_PREFIX = {False: "fed_emnist", True: "fed_emnist_digitsonly"}


def h5_file_names(only_digits: bool = False) -> tuple[str, str]:
    """``(train, test)`` file names of TFF's h5 distribution."""
    prefix = H5_PREFIX[only_digits]
    return f"{prefix}_train.h5", f"{prefix}_test.h5"


def load_h5_file(path: str | os.PathLike, *, num_classes: int = NUM_CLASSES) -> ClientData:
    """Load one TFF h5 file (all clients, in the file's sorted key order)."""
    path = Path(path)
    f, group, limit = open_examples(path, "{pixels,label}")
    with f:
        # All clients' rows first (h5 metadata, nothing read), so that each client's pixels
        # go straight into its rows of one array: no second copy of the data.
        ids = list(group)
        acc = PixelAccumulator(rows=_total_rows(group, ids, path=path, limit=limit))
        for cid in ids:
            pixels, label = _client(group, cid, path=path, limit=limit)
            x = _read(pixels, f"examples/{cid}/pixels", path=path, cid=cid)
            y = _read(label, f"examples/{cid}/label", path=path, cid=cid)
            check_client(x, y, source=str(path), client_id=cid, num_classes=num_classes)
            acc.add(cid, x, y, source=str(path))
    return acc.build(source=str(path))


def open_examples(path: Path, layout: str) -> tuple[h5py.File, h5py.Group, int]:
    """A TFF h5 file opened: ``(file, its examples group, the most bytes a dataset may
    hold)``, or a one-line error; ``layout``: the datasets of each client (for messages)."""
    check_data_file(path, "an h5 file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataFormatError(f"{path}: not a readable HDF5 file ({e}).") from None
    group = f.get("examples")
    if not isinstance(group, h5py.Group):
        f.close()
        raise DataFormatError(
            f"{path}: no 'examples' group; expected TFF's layout examples/<client_id>/{layout}."
        )
    # No client can hold more bytes than its compressed bytes inflate to (deflate peaks at
    # ~1032:1); a dataset declaring more is corrupt or hostile, refused before reading.
    return f, group, MAX_INFLATION * path.stat().st_size + (64 << 20)


def _total_rows(group: h5py.Group, ids: list[str], *, path: Path, limit: int) -> int:
    """All clients' pixel rows, from the metadata (nothing read). A malformed client, or
    more rows than the file could hold, raises the error the reading pass would."""
    rows = 0
    for cid in ids:
        try:
            shape = group[cid]["pixels"].shape
        except (KeyError, TypeError, ValueError, OSError, AttributeError):
            shape = _client(group, cid, path=path, limit=limit)[0].shape  # says what is wrong
        rows += shape[0] if shape else 0
    if rows * 28 * 28 > limit:  # uint8: a quarter of the pixels' float32 bytes
        for cid in ids:
            _client(group, cid, path=path, limit=limit)  # names the client declaring too much
        raise DataFormatError(
            f"{path}: its clients declare {rows:,} examples, more than the file could hold "
            f"({path.stat().st_size:,} bytes); the file is corrupt or not TFF's."
        )
    return rows


def _client(group: h5py.Group, cid: str, *, path: Path, limit: int):
    """``(pixels, label)``: the client's two h5 datasets, checked but not read."""
    client = client_group(group, cid, path=path, wants="'pixels' and 'label'")
    return tuple(_dataset(client, k, path=path, cid=cid, limit=limit) for k in ("pixels", "label"))


#: The most an h5 dataset may inflate relative to the whole file (deflate's bound, ~1032).
MAX_INFLATION = 1100


def client_group(group: h5py.Group, cid: str, *, path: Path, wants: str) -> h5py.Group:
    """``examples/<cid>``, or a DataFormatError unless it is a group (holding ``wants``)."""
    client = _member(group, cid, path=path, cid=cid, where=f"examples/{cid}")
    if not isinstance(client, h5py.Group):
        raise DataFormatError(
            f"{path}: client {cid!r}: examples/{cid} is not a group with {wants}."
        )
    return client


def _member(group: h5py.Group, name: str, *, path: Path, cid: str, where: str):
    """``group[name]``, or a DataFormatError naming a dangling soft or external link."""
    obj = group.get(name)
    if obj is not None:
        return obj
    link = group.get(name, getlink=True)
    if isinstance(link, h5py.SoftLink):
        what = f"a soft link to {link.path!r}, which does not exist"
    elif isinstance(link, h5py.ExternalLink):
        what = f"an external link to {link.filename}:{link.path}, which cannot be opened"
    else:
        what = "missing"
    raise DataFormatError(f"{path}: client {cid!r}: {where} is {what}.")


def _read_dataset(client: h5py.Group, key: str, *, path: Path, cid: str, limit: int):
    """``client[key]`` checked (:func:`_dataset`) and read (:func:`_read`)."""
    ds = _dataset(client, key, path=path, cid=cid, limit=limit)
    return _read(ds, f"examples/{cid}/{key}", path=path, cid=cid)


def _dataset(client: h5py.Group, key: str, *, path: Path, cid: str, limit: int):
    where = f"examples/{cid}/{key}"
    if key not in client and client.get(key, getlink=True) is None:
        raise DataFormatError(f"{path}: client {cid!r}: missing dataset {where}.")
    ds = _member(client, key, path=path, cid=cid, where=where)
    if not isinstance(ds, h5py.Dataset):
        raise DataFormatError(f"{path}: client {cid!r}: missing dataset {where}.")
    nbytes = int(np.prod(ds.shape, dtype=np.float64) * ds.dtype.itemsize)
    if nbytes > limit:
        raise DataFormatError(
            f"{path}: client {cid!r}: {where} declares shape {ds.shape} ({nbytes:,} bytes), "
            f"more than the file could hold ({path.stat().st_size:,} bytes); the file is "
            "corrupt or not TFF's."
        )
    if nbytes > 64 << 20:  # a real client is well under 1 MB: ask the system only then
        check_memory(
            nbytes,
            f"{path}: client {cid!r}: {where}",
            "Free memory or use a machine with more.",
            error=DataFormatError,
        )
    return ds


def _read(ds: h5py.Dataset, where: str, *, path: Path, cid: str) -> np.ndarray:
    try:
        return np.asarray(ds[()])
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as e:
        raise DataFormatError(
            f"{path}: client {cid!r}: cannot read {where} (corrupt data: {e}). The file "
            "is damaged: download or copy it again."
        ) from None


def load_h5_pair(
    train_path: str | os.PathLike,
    test_path: str | os.PathLike,
    *,
    num_classes: int = NUM_CLASSES,
) -> tuple[ClientData, ClientData]:
    """Load a train/test pair of h5 files; both list the same clients in the same order."""
    train = load_h5_file(train_path, num_classes=num_classes)
    test = load_h5_file(test_path, num_classes=num_classes)
    return align_train_test(train, test, source=f"{train_path} + {test_path}")


def load_h5_dir(
    data_dir: str | os.PathLike, *, only_digits: bool = False
) -> tuple[ClientData, ClientData]:
    """Load ``fed_emnist[_digitsonly]_{train,test}.h5`` from a directory."""
    archive = f"{H5_PREFIX[only_digits]}.tar.bz2"
    paths = tff_pair(Path(data_dir), h5_file_names(only_digits), archive, "--data-dir")
    num_classes = NUM_DIGIT_CLASSES if only_digits else NUM_CLASSES
    return load_h5_pair(*paths, num_classes=num_classes)
