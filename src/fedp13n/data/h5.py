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
from fedp13n.data.validate import (
    NUM_CLASSES,
    NUM_DIGIT_CLASSES,
    DataFormatError,
    DataNotFoundError,
    PixelAccumulator,
    align_train_test,
    check_client,
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
    if not path.is_file():
        raise DataNotFoundError(f"{path}: no such file.")
    acc = PixelAccumulator()
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataFormatError(f"{path}: not a readable HDF5 file ({e}).") from None
    with f:
        if "examples" not in f or not isinstance(f["examples"], h5py.Group):
            raise DataFormatError(
                f"{path}: no 'examples' group; expected TFF's layout "
                "examples/<client_id>/{pixels,label}."
            )
        group = f["examples"]
        for cid in group:
            client = group[cid]
            if not isinstance(client, h5py.Group):
                raise DataFormatError(
                    f"{path}: client {cid!r}: examples/{cid} is not a group with "
                    "'pixels' and 'label'."
                )
            for key in ("pixels", "label"):
                if key not in client or not isinstance(client[key], h5py.Dataset):
                    raise DataFormatError(
                        f"{path}: client {cid!r}: missing dataset examples/{cid}/{key}."
                    )
            x = np.asarray(client["pixels"][()])
            y = np.asarray(client["label"][()])
            check_client(x, y, source=str(path), client_id=cid, num_classes=num_classes)
            acc.add(cid, x, y, source=str(path))
    return acc.build(source=str(path))


def load_h5_pair(
    train_path: str | os.PathLike,
    test_path: str | os.PathLike,
    *,
    num_classes: int = NUM_CLASSES,
    policy: str = "error",
) -> tuple[ClientData, ClientData]:
    """Load a train/test pair of h5 files; both list the same clients in the same order."""
    train = load_h5_file(train_path, num_classes=num_classes)
    test = load_h5_file(test_path, num_classes=num_classes)
    return align_train_test(train, test, source=f"{train_path} + {test_path}", policy=policy)


def load_h5_dir(
    data_dir: str | os.PathLike, *, only_digits: bool = False, policy: str = "error"
) -> tuple[ClientData, ClientData]:
    """Load ``fed_emnist[_digitsonly]_{train,test}.h5`` from a directory."""
    data_dir = Path(data_dir)
    names = h5_file_names(only_digits)
    paths = [data_dir / n for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataNotFoundError(
            f"missing {', '.join(missing)}: --data-dir must hold TFF's {names[0]} and "
            f"{names[1]} (extracted from {H5_PREFIX[only_digits]}.tar.bz2)."
        )
    num_classes = NUM_DIGIT_CLASSES if only_digits else NUM_CLASSES
    return load_h5_pair(*paths, num_classes=num_classes, policy=policy)
