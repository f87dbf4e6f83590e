"""Read LEAF's FEMNIST JSON shards (Caldas et al. 2018, "LEAF: A Benchmark for Federated
Settings").

A LEAF data directory has ``train/*.json`` and ``test/*.json``; each file holds
``users`` (writer ids), ``num_samples`` and ``user_data[user] = {"x": [[784 floats]],
"y": [ints]}``. Pixels follow the same convention as TFF (1.0 background, [0, 1]), so the
result is interchangeable with :mod:`fedp13n.data.h5`'s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from fedp13n.data.client_data import ClientData
from fedp13n.data.validate import (
    NUM_CLASSES,
    DataFormatError,
    DataNotFoundError,
    PixelAccumulator,
    align_train_test,
    check_client,
)


def _read_shard(path: Path) -> dict:
    if path.is_dir():
        raise DataFormatError(f"{path}: is a directory, expected a LEAF JSON shard file.")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: not valid JSON ({e}).") from None
    except RecursionError:
        raise DataFormatError(f"{path}: JSON nested too deeply to be a LEAF shard.") from None
    except OSError as e:
        from fedp13n.data.resources import os_error_reason

        raise DataNotFoundError(f"{path}: cannot read it: {os_error_reason(e, path)}.") from None
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: expected a JSON object with 'users' and 'user_data'.")
    for key in ("users", "user_data"):
        if key not in data:
            raise DataFormatError(f"{path}: missing key {key!r} (LEAF layout).")
    users, user_data, num_samples = data["users"], data["user_data"], data.get("num_samples")
    if not isinstance(users, list) or not all(
        isinstance(u, str | int) and not isinstance(u, bool) for u in users
    ):
        raise DataFormatError(f"{path}: 'users' must be a list of writer ids (strings).")
    if not isinstance(user_data, dict):
        raise DataFormatError(f"{path}: 'user_data' must be an object {{user: {{x, y}}}}.")
    if num_samples is not None and not (
        isinstance(num_samples, list)
        and all(isinstance(n, int) and not isinstance(n, bool) for n in num_samples)
    ):
        raise DataFormatError(f"{path}: 'num_samples' must be a list of integers.")
    return data


def leaf_shards(split_dir: str | os.PathLike) -> Iterator[tuple[Path, dict]]:
    """Every ``*.json`` shard of a LEAF split directory, in name order: ``(path, its
    checked content)`` (:func:`_read_shard`); none is a DataNotFoundError."""
    split_dir = Path(split_dir)
    files = sorted(split_dir.glob("*.json"))
    if not files:
        raise DataNotFoundError(f"{split_dir}: no *.json LEAF shards found.")
    for path in files:
        yield path, _read_shard(path)


def leaf_entry(data: dict, user: str | int, path: Path) -> tuple[str, dict]:
    """``(client id, its {"x", "y"} entry)`` of a shard's ``user``, or a DataFormatError."""
    cid = str(user)
    if cid not in data["user_data"]:
        raise DataFormatError(
            f"{path}: client {cid!r}: listed in 'users' but has no entry in 'user_data'."
        )
    entry = data["user_data"][cid]
    if not isinstance(entry, dict) or "x" not in entry or "y" not in entry:
        raise DataFormatError(f"{path}: client {cid!r}: user_data needs 'x' and 'y'.")
    return cid, entry


#: What a FEMNIST client's ``x`` and ``y`` must be, for messages.
_EXPECTED = {"x": "a list of equal-length pixel lists", "y": "a list of labels"}


def _as_array(value, dtype, *, path: Path, cid: str, key: str) -> np.ndarray:
    """``entry[key]`` (a JSON list) as an array, or a DataFormatError naming the problem."""
    what = _EXPECTED[key]
    if not isinstance(value, list):
        raise DataFormatError(
            f"{path}: client {cid!r}: {key!r} is a {type(value).__name__}, expected {what}."
        )
    try:
        return np.asarray(value, dtype=dtype)
    except (ValueError, TypeError, RecursionError) as e:
        raise DataFormatError(f"{path}: client {cid!r}: {key!r} is not {what} ({e}).") from None


def _check_labels(labels, *, path: Path, cid: str) -> None:
    """Every label a JSON integer: ``true`` is not class 1, ``2.5`` or ``"3"`` no class at
    all (numpy would silently read a ``true`` among integers as 1)."""
    if not isinstance(labels, list) or all(type(v) is int for v in labels):
        return  # not a list: _as_array says so
    for j, v in enumerate(labels):
        if type(v) is int:
            continue
        if isinstance(v, list | dict):
            return  # nested: _as_array / the flat-list check say so
        shown = json.dumps(v) if isinstance(v, bool | str | float | None) else repr(v)
        kinds = {bool: "a boolean", str: "a string", type(None): "null"}
        kind = kinds.get(type(v), f"a {type(v).__name__}")
        if type(v) is float:
            kind = "a number with " + ("a decimal point" if v.is_integer() else "a fraction")
        raise DataFormatError(
            f"{path}: client {cid!r}: label {shown} (position {j} of 'y') is {kind}, expected "
            "an integer class id; write the labels as JSON integers (e.g. 3)."
        )


def load_leaf_split(split_dir: str | os.PathLike, *, num_classes: int = NUM_CLASSES) -> ClientData:
    """Load every ``*.json`` shard of one LEAF split directory (files in name order)."""
    acc = PixelAccumulator()
    for path, data in leaf_shards(split_dir):
        users, num_samples = data["users"], data.get("num_samples")
        if num_samples is not None and len(num_samples) != len(users):
            raise DataFormatError(
                f"{path}: {len(users)} users but {len(num_samples)} num_samples entries."
            )
        for i, user in enumerate(users):
            cid, entry = leaf_entry(data, user, path)
            x = _as_array(entry["x"], np.float32, path=path, cid=cid, key="x")
            _check_labels(entry["y"], path=path, cid=cid)
            y = _as_array(entry["y"], None, path=path, cid=cid, key="y")
            if y.dtype == object:
                raise DataFormatError(f"{path}: client {cid!r}: 'y' must be a flat list of labels.")
            if x.ndim != 2 or x.shape[1] != 784:
                if x.size == 0 and len(y) == 0:
                    x = x.reshape(0, 784)
                else:
                    raise DataFormatError(
                        f"{path}: client {cid!r}: 'x' has shape {x.shape}, expected "
                        "(n, 784) flattened 28x28 images."
                    )
            if y.size == 0:
                y = y.astype(np.int64)
            x = x.reshape(-1, 28, 28)
            check_client(x, y, source=str(path), client_id=cid, num_classes=num_classes)
            if num_samples is not None and int(num_samples[i]) != len(y):
                raise DataFormatError(
                    f"{path}: client {cid!r}: num_samples says {num_samples[i]} but it has "
                    f"{len(y)} examples."
                )
            acc.add(cid, x, y, source=str(path))
    return acc.build(source=str(Path(split_dir)))


def load_leaf_dir(
    data_dir: str | os.PathLike, *, num_classes: int = NUM_CLASSES
) -> tuple[ClientData, ClientData]:
    """Load a LEAF FEMNIST directory with ``train/`` and ``test/`` subdirectories."""
    return load_leaf_splits(
        data_dir, lambda d: load_leaf_split(d, num_classes=num_classes), "femnist"
    )


def load_leaf_splits(
    data_dir: str | os.PathLike, load_split: Callable[[Path], ClientData], task: str
) -> tuple[ClientData, ClientData]:
    """A LEAF data directory's ``train/`` and ``test/`` splits, each read by
    ``load_split``, aligned; a one-line error naming LEAF's ``data/<task>/data`` when one
    is missing."""
    data_dir = Path(data_dir)
    for sub in ("train", "test"):
        if not (data_dir / sub).is_dir():
            raise DataNotFoundError(
                f"{data_dir / sub}: not a directory; a LEAF data directory needs train/ and "
                f"test/ with the *.json shards (LEAF's data/{task}/data)."
            )
    train, test = load_split(data_dir / "train"), load_split(data_dir / "test")
    return align_train_test(train, test, source=str(data_dir))
