"""Read TFF's current EMNIST distribution, ``emnist_all.sqlite``, without TensorFlow.

TFF (``tff.simulation.datasets.emnist.load_data`` with ``SqlClientData``) ships one SQLite
file with tables ``examples(split_name, client_id, serialized_example_proto)`` and
``client_metadata(client_id, split_name, num_examples)``; split names ``all_train``,
``all_test``, ``digits_only_train``, ``digits_only_test``. Each row is a serialized
``tf.train.Example`` with ``pixels`` (784 floats, 1.0 background) and ``label`` (int64),
decoded by :mod:`fedp13n.data.tf_example`.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
from pathlib import Path

import numpy as np

from fedp13n.data.client_data import ClientData
from fedp13n.data.tf_example import ProtoDecodeError, parse_example
from fedp13n.data.validate import (
    NUM_CLASSES,
    NUM_DIGIT_CLASSES,
    DataFormatError,
    PixelAccumulator,
    align_train_test,
    check_client,
    check_data_file,
)

#: ``(train, test)`` split names for the 62-class data and the digits-only variant.
SQLITE_SPLITS = {False: ("all_train", "all_test"), True: ("digits_only_train", "digits_only_test")}
REQUIRED_TABLES = ("examples", "client_metadata")
REQUIRED_COLUMNS = ("split_name", "client_id", "serialized_example_proto")


def sqlite_uri(path: str | os.PathLike, mode: str = "ro") -> str:
    """A ``file:`` URI for SQLite naming exactly ``path``: ``%``, ``#``, ``?`` and spaces
    are percent-encoded (``Path.as_uri``), so ``a%41.db`` is not read as ``aA.db``."""
    return f"{Path(path).resolve().as_uri()}?mode={mode}"


def _connect(path: Path) -> sqlite3.Connection:
    check_data_file(path, "TFF's emnist_all.sqlite file")
    try:
        con = sqlite3.connect(sqlite_uri(path), uri=True)
    except sqlite3.Error as e:
        raise DataFormatError(f"{path}: cannot open the SQLite database ({e}).") from None
    try:
        _check_layout(con, path)
    except BaseException:
        con.close()
        raise
    return con


def _check_layout(con: sqlite3.Connection, path: Path) -> None:
    """A DataFormatError unless the database has TFF's tables and columns."""
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as e:
        raise DataFormatError(f"{path}: not a SQLite database, or unreadable ({e}).") from None
    missing = [t for t in REQUIRED_TABLES if t not in tables]
    if missing:
        raise DataFormatError(
            f"{path}: missing table(s) {missing}; TFF's layout has tables {list(REQUIRED_TABLES)}."
        )
    cols = {r[1] for r in con.execute("PRAGMA table_info(examples)")}
    missing = [c for c in REQUIRED_COLUMNS if c not in cols]
    if missing:
        raise DataFormatError(
            f"{path}: table 'examples' lacks column(s) {missing}; expected "
            f"{list(REQUIRED_COLUMNS)}."
        )


def _decode_row(blob: bytes, *, source: str, client_id: str) -> tuple[np.ndarray, int]:
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise DataFormatError(
            f"{source}: client {client_id!r}: serialized_example_proto holds a "
            f"{type(blob).__name__}, not the bytes of a serialized tf.train.Example."
        )
    try:
        feats = parse_example(blob)
    except (ProtoDecodeError, ValueError, OverflowError, IndexError) as e:
        raise DataFormatError(
            f"{source}: client {client_id!r}: a row is not a valid tf.train.Example ({e})."
        ) from None
    pixels, label = feats.get("pixels"), feats.get("label")
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.float32:
        raise DataFormatError(
            f"{source}: client {client_id!r}: example has no float feature 'pixels' "
            f"(features: {sorted(feats)})."
        )
    if pixels.size != 784:
        raise DataFormatError(
            f"{source}: client {client_id!r}: 'pixels' has {pixels.size} values, "
            "expected 784 (28x28)."
        )
    if not isinstance(label, np.ndarray) or label.dtype != np.int64 or label.size != 1:
        raise DataFormatError(
            f"{source}: client {client_id!r}: example needs exactly one int64 'label' "
            f"(got {label!r})."
        )
    return pixels.reshape(28, 28), int(label[0])


def load_sqlite_split(
    path: str | os.PathLike, split_name: str, *, num_classes: int = NUM_CLASSES
) -> ClientData:
    """Load one split of the SQLite file, clients sorted by id (as TFF lists them)."""
    path = Path(path)
    con = _connect(path)
    source = f"{path} [{split_name}]"
    acc = PixelAccumulator()
    try:
        rows = con.execute(
            "SELECT client_id, serialized_example_proto FROM examples "
            "WHERE split_name = ? ORDER BY client_id, rowid",
            (split_name,),
        )
        for cid, client_rows in itertools.groupby(rows, key=lambda row: str(row[0])):
            pairs = [_decode_row(blob, source=source, client_id=cid) for _, blob in client_rows]
            x = np.stack([p[0] for p in pairs])
            y = np.asarray([p[1] for p in pairs], dtype=np.int64)
            check_client(x, y, source=source, client_id=cid, num_classes=num_classes)
            acc.add(cid, x, y, source=source)
    except sqlite3.Error as e:
        raise DataFormatError(f"{source}: SQLite error while reading ({e}).") from None
    finally:
        con.close()
    if not acc.ids:
        raise DataFormatError(
            f"{source}: no examples with split_name {split_name!r}; TFF's split names are "
            f"{[s for pair in SQLITE_SPLITS.values() for s in pair]}."
        )
    return acc.build(source=source)


def load_sqlite(
    path: str | os.PathLike, *, only_digits: bool = False
) -> tuple[ClientData, ClientData]:
    """Load ``(train, test)`` from TFF's ``emnist_all.sqlite``."""
    train_split, test_split = SQLITE_SPLITS[only_digits]
    num_classes = NUM_DIGIT_CLASSES if only_digits else NUM_CLASSES
    train = load_sqlite_split(path, train_split, num_classes=num_classes)
    test = load_sqlite_split(path, test_split, num_classes=num_classes)
    return align_train_test(train, test, source=str(path))
