"""Checks shared by every federated EMNIST loader, and the errors they raise.

Federated EMNIST (Caldas et al. 2018, "LEAF: A Benchmark for Federated Settings"; TFF's
``tff.simulation.datasets.emnist``) uses one convention everywhere: 28x28 pixels in
[0, 1] with 1.0 the background, labels 0-9 digits, 10-35 'A'-'Z', 36-61 'a'-'z'.
Every loader funnels each client through :func:`check_client` so that a bad file fails
at load time with an error naming the file, the client and the problem, rather than as a
shape error deep inside training.

Pixels are stored as ``uint8`` only when that is lossless (:func:`compact_pixels`): the
real data's float32 pixels are exactly ``float32(k / 255)``, which ``UINT8_TO_UNIT``
reproduces bit for bit, so the model sees the very numbers TFF feeds it.
"""

from __future__ import annotations

import string
import warnings
from pathlib import Path

import numpy as np

from fedp13n.data.client_data import UINT8_TO_UNIT, ClientData

#: Number of classes of federated EMNIST-62 and of its digits-only variant.
NUM_CLASSES = 62
NUM_DIGIT_CLASSES = 10
IMAGE_SHAPE = (28, 28)

#: The character each EMNIST-62 label stands for.
LABEL_CHARS = string.digits + string.ascii_uppercase + string.ascii_lowercase


class DataError(ValueError):
    """A user-facing data problem (bad file, missing data, failed download).

    The message says what is wrong and what to do; the CLI prints it on one line.
    """


class DataFormatError(DataError):
    """A data file does not have the expected layout, shapes, dtypes or values."""


class DataNotFoundError(DataError, FileNotFoundError):
    """Expected data files are missing."""


class CacheCorruptError(DataError):
    """A cache entry does not match the checksums recorded when it was written."""


class CacheStaleError(DataError):
    """A cache entry was written by an older cache format."""


def check_data_file(path: Path, expected: str) -> None:
    """A :class:`DataNotFoundError` unless ``path`` is a file (``expected``: what it should be)."""
    if path.is_dir():
        raise DataNotFoundError(f"{path}: is a directory; expected {expected}.")
    if not path.is_file():
        raise DataNotFoundError(f"{path}: no such file.")


def tff_pair(data_dir: Path, names: tuple[str, str], archive: str, holder: str) -> list[Path]:
    """The paths of TFF's train and test files ``names`` in ``data_dir``, or a
    DataNotFoundError naming the missing ones, what must hold them (``holder``) and the
    ``archive`` they come from."""
    paths = [data_dir / n for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataNotFoundError(
            f"missing {', '.join(missing)}: {holder} must hold TFF's {names[0]} and "
            f"{names[1]} (extracted from {archive})."
        )
    return paths


def check_client(
    x: np.ndarray,
    y: np.ndarray,
    *,
    source: str,
    client_id: str,
    num_classes: int = NUM_CLASSES,
) -> None:
    """Validate one client's pixels ``x`` (n, 28, 28) and integer labels ``y`` (n,).

    Raises :class:`DataFormatError` naming ``source`` (a file) and ``client_id``.
    """
    where = f"{source}: client {client_id!r}"
    if x.ndim != 3 or tuple(x.shape[1:]) != IMAGE_SHAPE:
        raise DataFormatError(f"{where}: pixels have shape {tuple(x.shape)}, expected (n, 28, 28).")
    if not (np.issubdtype(x.dtype, np.floating) or x.dtype == np.uint8):
        raise DataFormatError(
            f"{where}: pixels have dtype {x.dtype}, expected float32 in [0, 1] (or uint8)."
        )
    if y.ndim != 1:
        raise DataFormatError(f"{where}: labels have shape {tuple(y.shape)}, expected (n,).")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataFormatError(f"{where}: labels have dtype {y.dtype}, expected integers.")
    if len(x) != len(y):
        raise DataFormatError(f"{where}: {len(x)} images but {len(y)} labels.")
    if len(y) == 0:
        raise DataFormatError(
            f"{where}: has no examples. Every client needs at least one example; "
            "remove the client from the file."
        )
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise DataFormatError(
            f"{where}: label {bad} is outside 0..{num_classes - 1} ({num_classes}-class EMNIST)."
        )
    # NaN fails both comparisons, so it is reported too.
    if np.issubdtype(x.dtype, np.floating) and not (np.all(x >= 0.0) and np.all(x <= 1.0)):
        with warnings.catch_warnings():  # all NaN: nanmin is nan, said in the message
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = np.nanmin(x), np.nanmax(x)
        raise DataFormatError(
            f"{where}: pixel values outside [0, 1] (min {lo}, max {hi}, or NaN); TFF's "
            "convention is [0, 1] with 1.0 background"
            + (": 0..255 intensities must be divided by 255." if hi > 1 else ".")
        )


def to_uint8_if_exact(x: np.ndarray) -> np.ndarray | None:
    """``x`` as uint8 pixels k if every value is exactly ``float32(k / 255)``, else None."""
    if x.dtype == np.uint8:
        return x
    xf = np.asarray(x, dtype=np.float32)
    u = np.rint(xf * np.float32(255.0)).clip(0, 255).astype(np.uint8)
    if np.array_equal(UINT8_TO_UNIT[u], xf):
        return u
    return None


class PixelAccumulator:
    """Collect clients' pixels compactly: uint8 while lossless, float32 once it is not.

    Why a class: the decision is global (one dtype for the whole ClientData) but is only
    known after seeing every client; this keeps uint8 (4x smaller) until a client breaks
    the k/255 pattern, then widens what was collected (exactly, through the lookup table).
    """

    def __init__(self, rows: int | None = None) -> None:
        self.ids: list[str] = []
        self.xs: list[np.ndarray] = []
        self.ys: list[np.ndarray] = []
        self._uint8 = True
        self._seen: dict[str, str] = {}
        #: With ``rows`` (all clients' examples, known up front) each client is written
        #: straight into one preallocated array: one copy of the data, never two.
        self._rows = rows
        if rows is not None:
            self._x, self._y = np.empty((rows, *IMAGE_SHAPE), np.uint8), np.empty(rows, np.int16)
            self._sizes: list[int] = []
            self._end = 0

    def add(self, client_id: str, x: np.ndarray, y: np.ndarray, *, source: str) -> None:
        """Append one (already validated) client; duplicate ids are an error."""
        if client_id in self._seen:
            raise DataFormatError(
                f"duplicate client id {client_id!r}: in {self._seen[client_id]} and in "
                f"{source}. Each client must appear once per split; remove one copy."
            )
        self._seen[client_id] = source
        self.ids.append(client_id)
        if self._rows is not None:
            self._write_rows(x, y)
            return
        if self._uint8:
            u = to_uint8_if_exact(x)
            if u is None:
                self._uint8 = False
                self.xs = [UINT8_TO_UNIT[a] for a in self.xs]
                self.xs.append(np.asarray(x, dtype=np.float32))
            else:
                self.xs.append(u)
        else:
            self.xs.append(np.asarray(x, dtype=np.float32))
        self.ys.append(np.asarray(y).astype(np.int16))

    def _write_rows(self, x: np.ndarray, y: np.ndarray) -> None:
        """:meth:`add` into the preallocated rows (widened to float32 as a whole when a
        client is not k/255, exactly as the per-client arrays are)."""
        start, self._end = self._end, self._end + len(y)
        self._sizes.append(len(y))
        u = to_uint8_if_exact(x) if self._uint8 else None
        if self._uint8 and u is None:
            self._uint8 = False
            self._x = UINT8_TO_UNIT[self._x]
        self._x[start : self._end] = u if u is not None else np.asarray(x, dtype=np.float32)
        self._y[start : self._end] = np.asarray(y).astype(np.int16)

    def build(self, *, source: str) -> ClientData:
        """The collected clients as one contiguous ClientData."""
        if not self.ids:
            raise DataFormatError(f"{source}: contains no clients.")
        if self._rows is None:
            return ClientData.from_clients(zip(self.ids, self.xs, self.ys, strict=True))
        assert self._end == self._rows, f"{source}: {self._end} of {self._rows} rows written"
        offsets = np.concatenate([[0], np.cumsum(self._sizes, dtype=np.int64)])
        return ClientData(self.ids, self._x, self._y, offsets, check=False)


def align_train_test(
    train: ClientData, test: ClientData, *, source: str
) -> tuple[ClientData, ClientData]:
    """Make ``test`` list the same clients as ``train``, in the same order.

    TFF's split gives every writer both a train and a test part, so a client present in
    only one split is an error naming it.
    """
    if train.client_ids == test.client_ids:
        return train, test
    tr, te = set(train.client_ids), set(test.client_ids)
    only_train, only_test = sorted(tr - te), sorted(te - tr)
    if only_train or only_test:
        parts = []
        if only_train:
            parts.append(f"{len(only_train)} only in train (e.g. {only_train[:3]})")
        if only_test:
            parts.append(f"{len(only_test)} only in test (e.g. {only_test[:3]})")
        raise DataFormatError(
            f"{source}: every client must have both a train and a test part, but "
            f"{' and '.join(parts)}. Fix the files (each writer needs both parts)."
        )
    common = [c for c in train.client_ids if c in te]
    if not common:
        raise DataFormatError(f"{source}: train and test have no client in common.")
    train = train if len(common) == len(train) else train.subset(common)
    return train, test.subset(common)


def check_counts(
    train: ClientData,
    test: ClientData,
    expected: tuple[int, int, int] | None,
    *,
    source: str,
    sizes: tuple[int, int] | None = None,
    unit: str = "examples",
) -> None:
    """Integrity check against the published (clients, train ``unit``, test ``unit``);
    ``sizes``: the train and test counts when they are not the examples (Shakespeare's
    snippets: a snippet gives one or more examples)."""
    if expected is None:
        return
    got = (len(train), *(sizes or (train.num_examples, test.num_examples)))
    if got != tuple(expected):
        raise DataFormatError(
            f"{source}: expected {expected[0]} clients, {expected[1]} train and "
            f"{expected[2]} test {unit}, found {got[0]}, {got[1]} and {got[2]}. "
            "The download is incomplete or not the expected data set: delete it and "
            "download again."
        )
