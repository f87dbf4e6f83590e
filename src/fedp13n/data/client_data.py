"""Federated datasets held compactly: one contiguous array for all clients plus offsets.

Why this layout: the full federated EMNIST-62 has 3,400 clients and 749,068 examples.
A dict of per-client arrays costs thousands of small allocations and slow pickling; one
``uint8`` array of pixels (587 MB) plus an ``offsets`` vector fits in well under 1 GiB,
saves to plain ``.npy`` files that load (or memory-map) in well under a second, and lets
worker processes map the same file instead of receiving pickled copies.

Pixels stay ``uint8`` where the source allows it (TFF's float pixels are exactly k/255) and
are converted to ``float32`` per batch, with the same lookup table everywhere so that the
numbers are bit-for-bit those of the source floats.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: uint8 -> float32 pixel value, k -> float32(k / 255). Exactly the float32 TFF stores.
UINT8_TO_UNIT = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)
_UINT8_TO_UNIT_T = torch.from_numpy(UINT8_TO_UNIT)

#: Version 2 added the SHA-256 checksums; older entries are stale and get rebuilt.
CACHE_FORMAT_VERSION = 2
#: The array files of a cache directory, each with its checksum in meta.json.
CACHE_FILES = ("x.npy", "y.npy", "offsets.npy")
#: Features of shape (n, 28, 28) are EMNIST images; labels of image data are 0..61.
IMAGE_SHAPE = (28, 28)
MAX_IMAGE_CLASSES = 62


def check_image_examples(x: np.ndarray, y: np.ndarray, *, where: str = "") -> None:
    """Validate image-shaped data ``x`` (n, 28, 28) or (n, 1, 28, 28) and its class labels ``y``.

    EMNIST pixels are ``uint8`` (k means k/255) or floats in [0, 1]; labels are integers
    in 0..61. Raises ``TypeError`` for a wrong dtype and ``ValueError`` for values out of
    range, each naming the problem and the fix. Features of any other shape (regression
    or generic test data) are not checked: only their caller knows what is valid.
    """
    if tuple(x.shape[1:]) not in (IMAGE_SHAPE, (1, *IMAGE_SHAPE)):  # (n, 28, 28), (n, 1, 28, 28)
        return
    at = f"{where}: " if where else ""
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise TypeError(
            f"{at}image pixels have dtype {x.dtype}; give uint8 (k means k/255) or floats "
            "in [0, 1] (e.g. x.astype(np.float32) / 255)."
        )
    if np.issubdtype(x.dtype, np.floating) and len(x):
        lo, hi = np.min(x), np.max(x)  # NaN propagates and fails both tests
        if hi > 1.0:
            raise ValueError(
                f"{at}image pixels must be in [0, 1], found values up to {hi}: they look "
                "like 0..255 intensities, divide them by 255 (or give uint8 pixels; not "
                "EMNIST? build with check=False)."
            )
        if not (lo >= 0.0 and hi <= 1.0):
            raise ValueError(
                f"{at}image pixels must be in [0, 1], found min {lo} and max {hi} "
                "(negative or NaN values; not EMNIST? build with check=False)."
            )
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(
            f"{at}labels of image data have dtype {y.dtype}; class labels must be integers "
            f"0..{MAX_IMAGE_CLASSES - 1} (e.g. y.astype(np.int64) if they are whole numbers)."
        )
    if len(y):
        lo, hi = int(np.min(y)), int(np.max(y))
        if lo < 0 or hi >= MAX_IMAGE_CLASSES:
            raise ValueError(
                f"{at}label {lo if lo < 0 else hi} is outside 0..{MAX_IMAGE_CLASSES - 1} "
                "(EMNIST-62 classes; not EMNIST? build with check=False)."
            )


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in chunks (about 1.5 GB/s)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _meta_digest(meta: dict) -> str:
    """SHA-256 of meta.json's content (ids, sizes, file checksums) but this digest."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def features_to_tensor(x: np.ndarray) -> torch.Tensor:
    """Convert a block of stored features to the float32 tensor a model sees.

    ``uint8`` features are pixel intensities k/255; every other dtype is taken as is
    (floating point arrays become float32).
    """
    if x.dtype == np.uint8:
        return _UINT8_TO_UNIT_T[torch.from_numpy(np.ascontiguousarray(x)).long()]
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.float() if t.is_floating_point() and t.dtype != torch.float32 else t


def labels_to_tensor(y: np.ndarray) -> torch.Tensor:
    """Integer labels become int64 (what cross-entropy wants); float targets float32."""
    t = torch.from_numpy(np.ascontiguousarray(y))
    if not t.is_floating_point():
        return t.long()
    return t.float() if t.dtype != torch.float32 else t


@functools.cache
def _lut_on(device: torch.device) -> torch.Tensor:
    """The uint8 -> k/255 lookup table on ``device`` (one copy per device)."""
    return _UINT8_TO_UNIT_T.to(device)


def _host_tensor(a: np.ndarray) -> torch.Tensor:
    """A CPU tensor with ``a``'s values (a copy when ``a`` is read-only, e.g. memory-mapped)."""
    a = np.ascontiguousarray(a)
    if not a.flags.writeable:
        a = a.copy()
    return torch.from_numpy(a)


def _resident_features(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """Features as kept on a device: uint8 pixels stay bytes (converted per batch by the
    lookup table on the device), anything else as :func:`features_to_tensor` makes it.
    Copied in blocks of ~64 MiB, so a memory-mapped array is never read whole into RAM."""
    dtype = torch.uint8 if x.dtype == np.uint8 else features_to_tensor(x[:0]).dtype
    out = torch.empty(x.shape, dtype=dtype, device=device)
    row = max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * x.itemsize)
    step = max(1, (64 << 20) // row)
    for lo in range(0, len(x), step):
        block = x[lo : lo + step]
        t = _host_tensor(block) if x.dtype == np.uint8 else features_to_tensor(block)
        out[lo : lo + step].copy_(t)
    return out


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def as_device(device: str | torch.device) -> torch.device:
    """A device argument as a ``torch.device``: a ``torch.device`` as it is, a name through
    :func:`fedp13n.utils.device.resolve_device` (a one-line ``ValueError`` for an unknown
    or absent device); CUDA with its index (``cuda`` is ``cuda:0``), so that one device
    has one name."""
    if not isinstance(device, torch.device):
        from fedp13n.utils.device import resolve_device

        device = resolve_device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    return device


def _positions(index: Any, n: int) -> np.ndarray | slice:
    """Example positions of a dataset of ``n``: a slice, integer positions (1-D, in
    0..n-1) or a boolean mask of length ``n``; an ``IndexError`` naming the problem else."""
    if isinstance(index, slice):
        return index
    a = np.asarray(index)
    if a.dtype == bool:
        if a.shape != (n,):
            raise IndexError(
                f"a boolean mask over a client's examples needs shape ({n},), got {a.shape}."
            )
        return np.flatnonzero(a)
    if a.ndim != 1:
        raise IndexError(
            f"example positions must be a 1-D array (or a slice or a boolean mask), got shape "
            f"{a.shape}."
        )
    if a.size == 0:
        return a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        raise IndexError(f"example positions must be integers, got dtype {a.dtype}.")
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi >= n:
        raise IndexError(
            f"example position {lo if lo < 0 else hi} is out of range for a client with "
            f"{n} examples (0..{n - 1})."
        )
    return a


@dataclass(frozen=True, eq=False)
class ClientDataset:
    """The unbatched examples of one client: features ``x`` and labels ``y``.

    Batching is the consumer's business (TFF's personalization convention): call
    :meth:`batches` (or :meth:`batch` with the positions of one batch) with the batch size,
    shuffling and device you want.

    Devices: :meth:`to` gives the same dataset with a copy of its examples kept on a device
    (``resident``); batches on that device are then cut there, with no copy from the host
    per batch. Without a resident copy, batches are made on the CPU (and moved when a
    device is asked for). The values are the same either way: uint8 pixels go through the
    same lookup table.
    """

    x: np.ndarray
    y: np.ndarray
    #: ``(x, y)`` kept on a device (see :meth:`to`), or None.
    resident: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(
                f"ClientDataset has {len(self.x)} feature rows but {len(self.y)} labels; "
                "they must have the same length."
            )

    def __len__(self) -> int:
        return len(self.y)

    def __getstate__(self) -> dict:
        # A device copy never travels: the receiving process makes its own (see :meth:`to`).
        return {"x": self.x, "y": self.y, "resident": None}

    @classmethod
    def from_arrays(cls, x, y, *, check: bool = True) -> ClientDataset:
        """Build from array-likes (numpy arrays, torch tensors, lists).

        Image-shaped features (n, 28, 28) are checked as EMNIST pixels and labels
        (:func:`check_image_examples`; ``check=False``: not); other features are taken as
        they are.
        """
        x, y = as_numpy(x), as_numpy(y)
        if check:
            check_image_examples(x, y, where="ClientDataset.from_arrays")
        return cls(x, y)

    # -- devices ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device | None:
        """The device of the resident copy, or None."""
        return None if self.resident is None else self.resident[0].device

    def to(self, device: str | torch.device) -> ClientDataset:
        """This dataset with its examples kept on ``device`` (copied once, now)."""
        device = as_device(device)
        if self.resident is not None and _same_device(self.resident[0].device, device):
            return self
        x = _resident_features(self.x, device)
        y = labels_to_tensor(_host_tensor(self.y).numpy()).to(device)
        return ClientDataset(self.x, self.y, (x, y))

    def subset(self, index: np.ndarray) -> ClientDataset:
        """The examples at positions ``index`` (integer positions, a boolean mask or a
        slice; see :meth:`batch`), keeping a resident copy resident."""
        index = _positions(index, len(self))
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        resident = None
        if self.resident is not None:
            i = torch.as_tensor(index, dtype=torch.long, device=self.resident[0].device)
            resident = (self.resident[0][i], self.resident[1][i])
        return ClientDataset(self.x[index], self.y[index], resident)

    def batch(
        self, index: np.ndarray | slice, device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The examples at ``index`` as ``(x, y)`` tensors on ``device`` (None: the CPU).

        ``index``: a slice, 1-D integer positions in ``0..len(self) - 1`` or a boolean mask
        of ``len(self)``; anything else (negative or out-of-range positions, floats) is an
        ``IndexError``.
        """
        device = torch.device("cpu") if device is None else as_device(device)
        index = _positions(index, len(self))
        if self.resident is not None and _same_device(self.resident[0].device, device):
            xr, yr = self.resident
            if not isinstance(index, slice):
                index = torch.from_numpy(index.astype(np.int64, copy=False)).to(
                    device, non_blocking=True
                )
            xb, yb = xr[index], yr[index]
            if xb.dtype == torch.uint8:
                xb = _lut_on(device)[xb.long()]
            return xb, yb
        xb, yb = features_to_tensor(self.x[index]), labels_to_tensor(self.y[index])
        if device.type != "cpu":
            xb, yb = xb.to(device), yb.to(device)
        return xb, yb

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: np.random.Generator | None = None,
        drop_last: bool = False,
        device: torch.device | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` tensor batches on ``device`` (None: the CPU); with ``shuffle``
        the order comes from ``generator``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
        if shuffle and generator is None:
            raise ValueError("shuffle=True needs a numpy Generator so the order is reproducible.")
        n = len(self)
        order = generator.permutation(n) if shuffle else None
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            rows = slice(start, start + batch_size)
            yield self.batch(rows if order is None else order[rows], device)

    def tensors(self, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All examples as one ``(x, y)`` pair of tensors on ``device`` (None: the CPU)."""
        return self.batch(slice(None), device)


class ClientData:
    """Ordered client ids and, for each client, its examples, stored contiguously.

    ``x[offsets[i]:offsets[i+1]]`` are the features of client ``client_ids[i]``.
    Image-shaped features (n, 28, 28) must be EMNIST pixels with class labels
    (:func:`check_image_examples`); features of other shapes are not range-checked.
    """

    def __init__(
        self,
        client_ids: Sequence[str],
        x: np.ndarray,
        y: np.ndarray,
        offsets: np.ndarray,
        *,
        path: Path | None = None,
        check: bool = True,
    ) -> None:
        ids = tuple(str(c) for c in client_ids)
        offsets = np.asarray(offsets, dtype=np.int64)
        if offsets.ndim != 1 or len(offsets) != len(ids) + 1:
            raise ValueError(
                f"offsets must have one entry per client plus one ({len(ids) + 1}), "
                f"got shape {offsets.shape}."
            )
        if len(offsets) and (offsets[0] != 0 or offsets[-1] != len(y)):
            raise ValueError(
                f"offsets must start at 0 and end at the number of examples ({len(y)}), "
                f"got {offsets[0]} .. {offsets[-1]}."
            )
        if np.any(np.diff(offsets) < 0):
            raise ValueError("offsets must be non-decreasing.")
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}; they must match.")
        if len(set(ids)) != len(ids):
            dup = sorted({c for c in ids if ids.count(c) > 1})[:5]
            raise ValueError(f"duplicate client ids: {dup}. Each client id must appear once.")
        if check:
            check_image_examples(x, y, where="ClientData")
        self.client_ids: tuple[str, ...] = ids
        self.x = x
        self.y = y
        self.offsets = offsets
        #: Directory the data was loaded from (a cache), if any: workers can map it.
        self.path = path
        self._index = {c: i for i, c in enumerate(ids)}
        #: Device copies of all examples (see :meth:`on_device`), by device name.
        self._device_copies: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_clients(
        cls, clients: Iterable[tuple[str, np.ndarray, np.ndarray]], *, check: bool = True
    ) -> ClientData:
        """Concatenate ``(client_id, x, y)`` triples into one contiguous ClientData.

        ``check``: image-shaped features are checked as EMNIST's
        (:func:`check_image_examples`); ``False`` takes any values (another image data
        set: normalised pixels, more classes)."""
        ids, xs, ys = [], [], []
        for cid, x, y in clients:
            x, y = as_numpy(x), as_numpy(y)
            if check:
                check_image_examples(x, y, where=f"ClientData.from_clients: client {cid!r}")
            ids.append(cid)
            xs.append(x)
            ys.append(y)
        if not ids:
            raise ValueError("ClientData needs at least one client.")
        sizes = np.array([len(y) for y in ys], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        x, y = np.concatenate(xs), np.concatenate(ys)
        # Each client was checked; check again only if mixed dtypes were promoted (uint8
        # pixels 0..255 next to float pixels would become floats 0..255).
        mixed = len({a.dtype for a in xs}) > 1 or len({a.dtype for a in ys}) > 1
        return cls(ids, x, y, offsets, check=check and mixed)

    @classmethod
    def from_mapping(cls, clients: Mapping[Any, Any], *, check: bool = False) -> ClientData:
        """A ClientData from ``{client_id: (x, y)}`` (numpy arrays, torch tensors or
        lists; the ids become strings, in the mapping's order): a researcher's own data.

        Any features and labels are taken (``check=True``: image-shaped features checked
        as EMNIST's, as :meth:`from_clients` does); each client's ``x`` and ``y`` must
        have the same number of rows, and all clients the same feature shape and dtype.
        """
        if not isinstance(clients, Mapping):
            raise TypeError(
                f"ClientData.from_mapping takes a mapping {{client_id: (x, y)}}, got a "
                f"{type(clients).__name__}."
            )
        triples = []
        for cid, pair in clients.items():
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise TypeError(
                    f"ClientData.from_mapping: client {cid!r} maps to a "
                    f"{type(pair).__name__}; each client maps to a pair (x, y)."
                )
            x, y = as_numpy(pair[0]), as_numpy(pair[1])
            if x.ndim == 0 or len(x) != len(y):
                raise ValueError(
                    f"ClientData.from_mapping: client {cid!r} has x of shape {x.shape} and "
                    f"y of shape {y.shape}; they need one row per example, the same number."
                )
            triples.append((str(cid), x, y))
        shapes = {(t[1].shape[1:], t[1].dtype, t[2].shape[1:], t[2].dtype) for t in triples}
        if len(shapes) > 1:
            raise ValueError(
                "ClientData.from_mapping: the clients' examples differ in shape or dtype "
                f"(x shape, x dtype, y shape, y dtype: {sorted(map(str, shapes))[:3]}); "
                "give every client the same."
            )
        return cls.from_clients(triples, check=check)

    @classmethod
    def from_arrays(cls, x: Any, y: Any, client_ids: Any, *, check: bool = False) -> ClientData:
        """A ClientData from pooled examples ``x``, ``y`` and the client id of each
        example (``client_ids``, one per row): the clients in order of first appearance,
        each with its examples in their order. Any features and labels are taken
        (``check``: as :meth:`from_mapping`)."""
        x, y, owner = as_numpy(x), as_numpy(y), as_numpy(client_ids)
        if owner.ndim != 1 or not (len(x) == len(y) == len(owner)):
            raise ValueError(
                f"ClientData.from_arrays: x has {len(x)} rows, y {len(y)} and client_ids "
                f"shape {owner.shape}; give one client id per example."
            )
        names = owner.astype(str)
        if not isinstance(client_ids, np.ndarray) or owner.dtype == object:
            _check_distinct_names(client_ids)
        _, first = np.unique(names, return_index=True)
        order = names[np.sort(first)]
        return cls.from_mapping({c: (x[names == c], y[names == c]) for c in order}, check=check)

    # -- access ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.client_ids)

    def __getstate__(self) -> dict:
        # Device copies stay in the process that made them (see :meth:`on_device`).
        return {**self.__dict__, "_device_copies": {}}

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._index

    def __repr__(self) -> str:
        return (
            f"ClientData({len(self)} clients, {self.num_examples} examples, "
            f"x {self.x.dtype}{list(self.x.shape[1:])}, y {self.y.dtype})"
        )

    @property
    def num_examples(self) -> int:
        return int(self.offsets[-1])

    def client_sizes(self) -> np.ndarray:
        """Number of examples of each client, in ``client_ids`` order."""
        return np.diff(self.offsets)

    def size(self, client_id: str) -> int:
        i = self._position(client_id)
        return int(self.offsets[i + 1] - self.offsets[i])

    def _position(self, client_id: str) -> int:
        try:
            return self._index[client_id]
        except KeyError:
            raise KeyError(
                f"unknown client id {client_id!r}; this ClientData has {len(self)} clients "
                f"(e.g. {list(self.client_ids[:3])})."
            ) from None

    def create_dataset(
        self, client_id: str, device: str | torch.device | None = None
    ) -> ClientDataset:
        """The examples of one client (views into the contiguous arrays, no copy).

        With a ``device`` the dataset is resident there (:meth:`ClientDataset.to`): the
        first such call copies *all* clients' examples to the device (uint8 pixels stay
        bytes: the full EMNIST-62 is ~0.5 GB), and every later call, for any client, slices
        that copy.
        """
        i = self._position(client_id)
        lo, hi = self.offsets[i], self.offsets[i + 1]
        dataset = ClientDataset(self.x[lo:hi], self.y[lo:hi])
        if device is None:
            return dataset
        device = as_device(device)
        x, y = self.on_device(device)
        return ClientDataset(dataset.x, dataset.y, (x[lo:hi], y[lo:hi]))

    def on_device(self, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """All examples kept on ``device``, copied on the first call (per device)."""
        device = as_device(device)
        key = f"{device.type}:{device.index or 0}"
        cached = self._device_copies.get(key)
        if cached is None:
            full = ClientDataset(self.x, self.y).to(device)
            assert full.resident is not None
            cached = self._device_copies[key] = full.resident
        return cached

    def subset(self, client_ids: Sequence[str]) -> ClientData:
        """A new ClientData with only these clients, in this order (copies the examples)."""
        pos = [self._position(c) for c in client_ids]
        if not pos:
            return ClientData([], self.x[:0].copy(), self.y[:0].copy(), np.zeros(1, np.int64))
        # checked when this ClientData was built: taken as they are
        return ClientData.from_clients(
            ((self.client_ids[i], *self._slice(i)) for i in pos), check=False
        )

    def _slice(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.x[lo:hi], self.y[lo:hi]

    # -- persistence ------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the cache format: ``x.npy``, ``y.npy``, ``offsets.npy``, ``meta.json``.

        ``meta.json`` records the SHA-256 of each array file and of its own content
        (client ids, sizes), checked by :meth:`load`. Written into a temporary sibling
        directory and renamed when complete, so a crash or a full disk never leaves a
        half-written cache behind (a failure raises ``StorageError`` and removes it).
        """
        from fedp13n.data.resources import storage_error

        try:
            return self._save_files(Path(directory))
        except OSError as e:
            raise storage_error(
                e,
                "write the ClientData cache",
                directory,
                "Nothing was written: free space or choose a writable directory.",
            ) from None

    def _save_files(self, directory: Path) -> Path:
        """:meth:`save`, raising the OSError of a failed write (temporary files removed)."""
        tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            np.save(tmp / "x.npy", np.ascontiguousarray(self.x))
            np.save(tmp / "y.npy", np.ascontiguousarray(self.y))
            np.save(tmp / "offsets.npy", self.offsets)
            meta = {
                "format_version": CACHE_FORMAT_VERSION,
                "client_ids": list(self.client_ids),
                "num_examples": self.num_examples,
                "sha256": {name: file_sha256(tmp / name) for name in CACHE_FILES},
            }
            meta["meta_sha256"] = _meta_digest(meta)
            (tmp / "meta.json").write_text(json.dumps(meta))
            if directory.exists():
                shutil.rmtree(directory)
            tmp.rename(directory)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return directory

    @classmethod
    def load(
        cls, directory: str | os.PathLike, *, mmap: bool = False, verify: bool = True
    ) -> ClientData:
        """Load the cache format written by :meth:`save` (memory-mapped with ``mmap``).

        With ``verify`` (the default, memory-mapped or not) every file is checked against
        the SHA-256 recorded at write time, reading it once (about 0.4 s for the full
        EMNIST-62): a flipped byte, edited ids or changed labels raise
        ``CacheCorruptError``. ``verify=False`` skips this for files already verified,
        e.g. by the process that hands them to workers. An entry of an older format
        raises ``CacheStaleError``. Both are ``DataError``: delete the directory and load
        the dataset again (``load_dataset`` does so by itself).
        """
        from fedp13n.data.validate import CacheCorruptError, CacheStaleError

        directory = Path(directory)
        meta_file = directory / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"{directory} is not a fedp13n ClientData cache (no meta.json). "
                "Delete it and load the dataset again to rebuild the cache."
            )
        rebuild = "delete the directory and load the dataset again to rebuild it."

        def corrupt(problem: str) -> CacheCorruptError:
            return CacheCorruptError(f"cache entry {directory} is corrupt: {problem}; {rebuild}")

        try:
            meta = json.loads(meta_file.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise corrupt(f"meta.json is not valid JSON ({e})") from None
        if not isinstance(meta, dict):
            raise corrupt("meta.json is not a JSON object")
        if meta.get("format_version") != CACHE_FORMAT_VERSION:
            raise CacheStaleError(
                f"{directory} has cache format {meta.get('format_version')}, this fedp13n "
                f"reads {CACHE_FORMAT_VERSION} (with checksums): {rebuild}"
            )
        sums = meta.get("sha256")
        if not isinstance(sums, dict) or meta.get("meta_sha256") != _meta_digest(meta):
            raise corrupt("meta.json (client ids, sizes or checksums) does not match its checksum")
        if verify:
            for name in CACHE_FILES:
                path = directory / name
                if not path.is_file():
                    raise corrupt(f"{name} is missing")
                if file_sha256(path) != sums.get(name):
                    raise corrupt(f"{name} does not match the SHA-256 recorded when it was written")
        mode = "r" if mmap else None
        try:
            x = np.load(directory / "x.npy", mmap_mode=mode)
            y = np.load(directory / "y.npy", mmap_mode=mode)
            offsets = np.load(directory / "offsets.npy")
            return cls(meta["client_ids"], x, y, offsets, path=directory)
        except (ValueError, TypeError, KeyError, EOFError) as e:
            raise corrupt(f"{e}") from None

    # -- sharing with worker processes (fedp13n.execution's share-by-path protocol) --------
    def to_shared_path(self, scratch: Path | None) -> Path | None:
        """The cache directory workers memory-map: this data's own, else saved to ``scratch``."""
        if self.path is not None:
            return self.path
        return None if scratch is None else self.save(scratch)

    @classmethod
    def from_shared_path(cls, path: str | os.PathLike) -> ClientData:
        """Open a directory from :meth:`to_shared_path` in a worker (memory-mapped). The
        publishing process verified (or wrote) the files, so workers skip the checksums."""
        return cls.load(path, mmap=True, verify=False)


def as_numpy(a: Any) -> np.ndarray:
    """An array-like (numpy array, torch tensor, list) as a numpy array."""
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _check_distinct_names(client_ids: Any) -> None:
    """Distinct client ids given as Python values (a list, an object array) stay distinct
    as the text ids a ClientData keeps: 1 and "1" would silently become one client."""
    values = client_ids.tolist() if isinstance(client_ids, np.ndarray) else client_ids
    seen: dict[str, Any] = {}
    for cid in dict.fromkeys(values):  # each distinct value once
        if str(cid) in seen:
            raise ValueError(
                f"ClientData.from_arrays: client ids {seen[str(cid)]!r} and {cid!r} are both "
                f"client '{cid}' as text, the form client ids take; give each client one id."
            )
        seen[str(cid)] = cid
