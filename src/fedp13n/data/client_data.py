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

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

#: uint8 -> float32 pixel value, k -> float32(k / 255). Exactly the float32 TFF stores.
UINT8_TO_UNIT = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)
_UINT8_TO_UNIT_T = torch.from_numpy(UINT8_TO_UNIT)

CACHE_FORMAT_VERSION = 1


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


@dataclass(frozen=True, eq=False)
class ClientDataset:
    """The unbatched examples of one client: features ``x`` and labels ``y``.

    Batching is the consumer's business (TFF's personalization convention): call
    :meth:`batches` with the batch size and shuffling you want.
    """

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(
                f"ClientDataset has {len(self.x)} feature rows but {len(self.y)} labels; "
                "they must have the same length."
            )

    def __len__(self) -> int:
        return len(self.y)

    @classmethod
    def from_arrays(cls, x, y) -> ClientDataset:
        """Build from array-likes (numpy arrays, torch tensors, lists)."""
        x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        y = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        return cls(x, y)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: np.random.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` tensor batches; with ``shuffle`` the order comes from ``generator``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
        n = len(self)
        if shuffle:
            if generator is None:
                raise ValueError(
                    "shuffle=True needs a numpy Generator so the order is reproducible."
                )
            order = generator.permutation(n)
        else:
            order = None
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            if order is None:
                xb, yb = self.x[start : start + batch_size], self.y[start : start + batch_size]
            else:
                idx = order[start : start + batch_size]
                xb, yb = self.x[idx], self.y[idx]
            yield features_to_tensor(xb), labels_to_tensor(yb)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All examples as one ``(x, y)`` pair of tensors."""
        return features_to_tensor(self.x), labels_to_tensor(self.y)


class ClientData:
    """Ordered client ids and, for each client, its examples, stored contiguously.

    ``x[offsets[i]:offsets[i+1]]`` are the features of client ``client_ids[i]``.
    """

    def __init__(
        self,
        client_ids: Sequence[str],
        x: np.ndarray,
        y: np.ndarray,
        offsets: np.ndarray,
        *,
        path: Path | None = None,
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
        self.client_ids: tuple[str, ...] = ids
        self.x = x
        self.y = y
        self.offsets = offsets
        #: Directory the data was loaded from (a cache), if any: workers can map it.
        self.path = path
        self._index = {c: i for i, c in enumerate(ids)}

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_clients(cls, clients: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> ClientData:
        """Concatenate ``(client_id, x, y)`` triples into one contiguous ClientData."""
        ids, xs, ys = [], [], []
        for cid, x, y in clients:
            ids.append(cid)
            xs.append(np.asarray(x))
            ys.append(np.asarray(y))
        if not ids:
            raise ValueError("ClientData needs at least one client.")
        sizes = np.array([len(y) for y in ys], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        return cls(ids, np.concatenate(xs), np.concatenate(ys), offsets)

    # -- access ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.client_ids)

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

    def create_dataset(self, client_id: str) -> ClientDataset:
        """The examples of one client (views into the contiguous arrays, no copy)."""
        i = self._position(client_id)
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return ClientDataset(self.x[lo:hi], self.y[lo:hi])

    def subset(self, client_ids: Sequence[str]) -> ClientData:
        """A new ClientData with only these clients, in this order (copies the examples)."""
        pos = [self._position(c) for c in client_ids]
        if not pos:
            return _empty_like(self)
        return ClientData.from_clients((self.client_ids[i], *self._slice(i)) for i in pos)

    def _slice(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.x[lo:hi], self.y[lo:hi]

    # -- persistence ------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the cache format: ``x.npy``, ``y.npy``, ``offsets.npy``, ``meta.json``.

        Written into a temporary sibling directory and renamed when complete, so a crash
        never leaves a half-written cache behind.
        """
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
        if tmp.exists():
            _rmtree(tmp)
        tmp.mkdir()
        np.save(tmp / "x.npy", np.ascontiguousarray(self.x))
        np.save(tmp / "y.npy", np.ascontiguousarray(self.y))
        np.save(tmp / "offsets.npy", self.offsets)
        meta = {
            "format_version": CACHE_FORMAT_VERSION,
            "client_ids": list(self.client_ids),
            "num_examples": self.num_examples,
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        if directory.exists():
            _rmtree(directory)
        tmp.rename(directory)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, *, mmap: bool = False) -> ClientData:
        """Load the cache format written by :meth:`save` (memory-mapped with ``mmap``)."""
        directory = Path(directory)
        meta_file = directory / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"{directory} is not a fedp13n ClientData cache (no meta.json). "
                "Delete it and load the dataset again to rebuild the cache."
            )
        meta = json.loads(meta_file.read_text())
        if meta.get("format_version") != CACHE_FORMAT_VERSION:
            raise ValueError(
                f"{directory} has cache format {meta.get('format_version')}, this fedp13n "
                f"reads {CACHE_FORMAT_VERSION}: delete the directory to rebuild it."
            )
        mode = "r" if mmap else None
        x = np.load(directory / "x.npy", mmap_mode=mode)
        y = np.load(directory / "y.npy", mmap_mode=mode)
        offsets = np.load(directory / "offsets.npy")
        return cls(meta["client_ids"], x, y, offsets, path=directory)

    # -- sharing with worker processes (fedp13n.execution's share-by-path protocol) --------
    def to_shared_path(self, scratch: Path | None) -> Path | None:
        """The cache directory workers memory-map: this data's own, else saved to ``scratch``."""
        if self.path is not None:
            return self.path
        return None if scratch is None else self.save(scratch)

    @classmethod
    def from_shared_path(cls, path: str | os.PathLike) -> ClientData:
        """Open a directory from :meth:`to_shared_path` in a worker (memory-mapped)."""
        return cls.load(path, mmap=True)


def _empty_like(cd: ClientData) -> ClientData:
    return ClientData([], cd.x[:0].copy(), cd.y[:0].copy(), np.zeros(1, dtype=np.int64))


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)
