"""Per-client state kept across rounds, compactly, for thousands of clients.

Methods trained *in* the federation keep something per client from round to round (a
personal head, a personal model, control variates, a mixing weight). A
:class:`ClientStateStore` keeps each named state tensor of every client in **one file**,
a ``(num_clients, *shape)`` array on disk (a numpy memmap's layout: :meth:`~ClientStateStore.array`
maps it), with a small JSON index, never one Python object per client. A round reads and
writes only its clients' rows, with ``os.pread`` / ``os.pwrite``, so the process's memory
stays flat in the number of clients and of rounds; rows never written take no disk (the
files are created sparse).

Layout of a store directory (e.g. ``<run>/client_state/``)::

    index.json                    format, version, round (the last commit), client_ids
                                  (row i holds client_ids[i]), spec {name: shape, dtype},
                                  initialised (the rows written so far, sorted)
    <k>.bin                       the k-th spec entry's rows, C order, no header
    generations/round_000012.npz  what the commit of round 12 overwrote: the rows it
                                  wrote, their bytes before it and whether they were
                                  initialised, and the round it was applied on

A round: the lead process reads each sampled client's state (:meth:`get`) into its task
(``ClientTask.state``: the tensors travel *with* the task, to a worker process or a Ray
actor, by value); the client work returns the new state in its result
(``ClientOutput.state``) and the lead process alone writes it (:meth:`put`). A worker
killed mid-task changes nothing on disk; its retried task starts from the same state.

Commits and checkpoints (why kill -9 and ``--resume`` stay bit-identical). :meth:`put`
keeps the round's new rows in memory (:meth:`get` sees them). :meth:`commit` ``(r)``,
called after round r and *before* round r's checkpoint is written:

1. writes ``generations/round_r.npz`` (temporary file, fsync, rename: all or nothing)
   holding the **old** bytes of every row the round writes;
2. writes the new rows into the ``.bin`` files (``os.pwrite``: a full disk is an
   ``OSError``, not the ``SIGBUS`` of a write through a map) and fsyncs them;
3. rewrites ``index.json`` with ``round = r`` (atomically): the commit point.

A checkpoint is only written after its round's commit, so the index's round is never
behind the newest checkpoint. :meth:`restore` ``(t)`` (resuming from round t's
checkpoint; also what :meth:`open` of a store left by a crash needs) first writes back the
old rows of a generation newer than the index (a commit killed during step 2), then
undoes the generations after round t, newest first, and sets the index to t: the rows are
then byte for byte those that round t's commit left, whatever moment a crash hit.
:meth:`prune` ``(r)`` deletes the generations of rounds <= r (call it with the oldest
checkpoint kept: the store can then go back to any kept checkpoint and no further). A
generation holds only the rows its round wrote, so a commit costs those rows twice (old
to the generation, new to the files), not a copy of the store.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedp13n.rundir.integrity import writing
from fedp13n.utils.fs import atomic_writer

FORMAT = "fedp13n.ClientStateStore"
VERSION = 1
INDEX = "index.json"
GENERATIONS = "generations"
_GENERATION = re.compile(r"^round_(\d+)\.npz$")

#: dtypes a state tensor may have (numpy has no bfloat16: keep such state in float32).
DTYPES = {
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float64,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

Spec = Mapping[str, tuple[Sequence[int], Any]]


def state_spec(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], str]]:
    """The spec that holds tensors like these (same names, shapes and dtypes), e.g.
    ``state_spec(dict(model.fc2.named_parameters()))`` for a personal head."""
    if not isinstance(tensors, Mapping) or not all(
        isinstance(t, torch.Tensor) for t in tensors.values()
    ):
        raise TypeError(
            "state_spec takes a mapping name -> tensor (e.g. dict(model.fc2.named_parameters())"
            f"), got {type(tensors).__name__}."
        )
    return {n: (tuple(t.shape), _dtype_name(n, t.dtype)) for n, t in tensors.items()}


def _dtype_name(name: str, dtype: Any) -> str:
    """The :data:`DTYPES` name of ``dtype`` (a torch dtype or its name)."""
    key = _DTYPE_NAMES.get(dtype) if isinstance(dtype, torch.dtype) else dtype
    if key not in DTYPES:
        raise ValueError(
            f"client state {name!r}: dtype {dtype!r} cannot be stored; use one of "
            f"{sorted(DTYPES)} (keep bfloat16 state in float32)."
        )
    return key


def _check_spec(spec: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """``spec`` as ``{name: (shape, dtype name)}``, checked (one-line ValueErrors)."""
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(
            "spec must be a non-empty mapping name -> (shape, dtype), e.g. "
            "{'head.weight': ((62, 128), torch.float32)}."
        )
    out = {}
    for name, entry in spec.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"client state names must be non-empty strings, got {name!r}.")
        if not (isinstance(entry, Sequence) and len(entry) == 2):
            raise ValueError(f"client state {name!r}: give (shape, dtype), got {entry!r}.")
        shape, dtype = entry
        shape = (shape,) if isinstance(shape, int) else shape
        if not isinstance(shape, Sequence) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise ValueError(
                f"client state {name!r}: the shape must be a tuple of non-negative integers, "
                f"got {shape!r}."
            )
        out[name] = (tuple(int(d) for d in shape), _dtype_name(name, dtype))
    return out


def _check_ids(client_ids: Any) -> list[str | int]:
    if isinstance(client_ids, (str, bytes)) or not isinstance(client_ids, Iterable):
        raise TypeError(f"client_ids must be a list of client ids, got {client_ids!r}.")
    ids = list(client_ids)
    bad = [c for c in ids if isinstance(c, bool) or not isinstance(c, (str, int))]
    if bad:
        raise TypeError(f"client ids must be strings or integers, got {bad[0]!r}.")
    if len(set(ids)) != len(ids):
        twice = next(c for c in ids if ids.count(c) > 1)
        raise ValueError(f"client id {twice!r} is given more than once; ids must be unique.")
    return ids


class ClientStateStore:
    """Named per-client tensors of ``client_ids``, on disk (see the module docstring).

    Make one with :meth:`create`, reopen it with :meth:`open`. :meth:`get` and
    :meth:`put` read and write one client's tensors; :meth:`commit` makes a round's writes
    durable (before its checkpoint), :meth:`restore` goes back to a checkpointed round,
    :meth:`prune` forgets generations no checkpoint needs.
    """

    def __init__(self, directory: Path, index: dict[str, Any]) -> None:
        self.directory = directory
        self.client_ids: list[str | int] = list(index["client_ids"])
        self.spec = {n: (tuple(s), d) for n, (s, d) in index["spec"].items()}
        #: the round of the last commit (0: none yet)
        self.round_num = int(index["round"])
        self._rows = {c: i for i, c in enumerate(self.client_ids)}
        self._initialised = np.zeros(len(self.client_ids), dtype=bool)
        self._initialised[np.asarray(index["initialised"], dtype=np.int64)] = True
        self._pending: dict[int, dict[str, torch.Tensor]] = {}

    # -- making and opening ------------------------------------------------------------------
    @classmethod
    def create(
        cls, directory: str | os.PathLike, client_ids: Iterable[str | int], spec: Spec
    ) -> ClientStateStore:
        """A new, empty store for ``client_ids`` in ``directory`` (which must not hold one);
        ``spec`` maps each state name to ``(shape, dtype)`` (dtype: a torch dtype or one
        of :data:`DTYPES`' names). Every client has every tensor; none is initialised."""
        directory = _folder(directory)
        spec_ = _check_spec(spec)
        ids = _check_ids(client_ids)
        if (directory / INDEX).exists():
            raise FileExistsError(
                f"{directory} already holds a client-state store; open it with "
                "ClientStateStore.open (or choose another folder)."
            )
        (directory / GENERATIONS).mkdir(parents=True, exist_ok=True)
        store = cls(directory, {"round": 0, "client_ids": ids, "spec": spec_, "initialised": []})
        for k, name in enumerate(spec_):
            path = store._file(k)
            with writing(path), open(path, "wb") as f:
                f.truncate(len(ids) * store._row_bytes(name))  # sparse: no disk until written
        store._write_index()
        return store

    @classmethod
    def open(cls, directory: str | os.PathLike) -> ClientStateStore:
        """The store in ``directory`` as its last commit left it (a commit cut short by a
        crash is undone: see :meth:`restore`)."""
        directory = _folder(directory)
        path = directory / INDEX
        try:
            index = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no client-state store in {directory} (no {INDEX}); make one with "
                "ClientStateStore.create."
            ) from None
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path} is not a client-state index ({e}); the store cannot be read: start afresh."
            ) from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise ValueError(
                f"{path} is not a fedp13n client-state index; the store cannot be read: start "
                "afresh."
            )
        if index.get("version") != VERSION:
            raise ValueError(
                f"{path} has client-state version {index.get('version')}; this fedp13n reads "
                f"version {VERSION}."
            )
        try:
            store = cls(directory, _checked_index(index))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ValueError(
                f"{path} is a damaged client-state index ({type(e).__name__}: {e}); the store "
                "cannot be read: start afresh (a new run, or ClientStateStore.create)."
            ) from None
        store._check_files()
        store._undo_unfinished()
        return store

    # -- one client ----------------------------------------------------------------------------
    def get(self, client_id: str | int) -> dict[str, torch.Tensor] | None:
        """The client's tensors (copies, on the CPU), or ``None`` if never written."""
        row = self._row(client_id)
        pending = self._pending.get(row)
        if pending is not None:
            return {n: t.clone() for n, t in pending.items()}
        if not self._initialised[row]:
            return None
        rows = np.array([row])
        return {
            n: torch.from_numpy(self._read_rows(k, rows)[0, ...]) for k, n in enumerate(self.spec)
        }

    def put(self, client_id: str | int, state: Mapping[str, Any]) -> None:
        """Set the client's tensors (every name of the spec, its shape and dtype); kept in
        memory until :meth:`commit`."""
        row = self._row(client_id)
        if not isinstance(state, Mapping) or set(state) != set(self.spec):
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(
                f"client {client_id!r}: the state must hold exactly {sorted(self.spec)}, got {got}."
            )
        new = {}
        for name, (shape, dtype) in self.spec.items():
            t = torch.as_tensor(state[name])
            if tuple(t.shape) != shape or t.dtype != DTYPES[dtype]:
                raise ValueError(
                    f"client {client_id!r}: state {name!r} must be {dtype} of shape "
                    f"{shape}, got {t.dtype} of shape {tuple(t.shape)}."
                )
            new[name] = t.detach().cpu().clone().contiguous()
        self._pending[row] = new

    def initialised(self, client_id: str | int) -> bool:
        """Whether the client's state was ever written (committed or pending)."""
        row = self._row(client_id)
        return row in self._pending or bool(self._initialised[row])

    @property
    def num_initialised(self) -> int:
        """Clients with committed state."""
        return int(self._initialised.sum())

    # -- rounds ----------------------------------------------------------------------------------
    def commit(self, round_num: int) -> Path:
        """Make round ``round_num``'s writes durable (the three steps of the module
        docstring); call it after the round and before its checkpoint. Returns the
        generation file."""
        _check_round(round_num)
        if round_num <= self.round_num:
            raise ValueError(
                f"commit({round_num}): the store is at round {self.round_num}; commit each "
                "round once, in order (restore(r) first to redo rounds after r)."
            )
        rows = np.array(sorted(self._pending), dtype=np.int64)
        arrays = {"rows": rows, "initialised": self._initialised[rows], "on": self.round_num}
        for k in range(len(self.spec)):
            arrays[f"old_{k}"] = self._read_rows(k, rows)
        path = self._generation(round_num)
        with writing(path), atomic_writer(path, "wb") as f:
            np.savez(f, **arrays)
        for k, name in enumerate(self.spec):
            values = [self._pending[int(r)][name].numpy() for r in rows]
            self._write_rows(k, rows, values)
        self._pending.clear()
        self._initialised[rows] = True
        self.round_num = round_num
        self._write_index()
        return path

    def restore(self, round_num: int) -> None:
        """Go back to the rows round ``round_num``'s commit left (0: the empty store),
        undoing later generations newest first; pending writes are dropped. A
        ``ValueError`` when a generation it needs was pruned or ``round_num`` was never
        committed."""
        self._pending.clear()
        self._undo_unfinished()
        while self.round_num > round_num:
            path = self._generation(self.round_num)
            if not path.is_file():
                raise ValueError(
                    f"the client state in {self.directory} is at round {self.round_num} and "
                    f"cannot go back to round {round_num}: {path.name} was pruned; resume "
                    "from a newer checkpoint or start afresh."
                )
            on = self._undo(path)
            if on < round_num:
                raise ValueError(
                    f"round {round_num} was never committed to the client state in "
                    f"{self.directory} (the commits go from {on} to {self.round_num}); "
                    "restore a committed round."
                )
            self.round_num = on
            self._write_index()  # before the unlink: a crash between redoes the undo
            path.unlink()
        if self.round_num != round_num:
            raise ValueError(
                f"the client state in {self.directory} is at round {self.round_num}, before "
                f"round {round_num}: that round was never committed (a checkpoint is written "
                "after its round's commit)."
            )

    def prune(self, round_num: int) -> list[Path]:
        """Delete the generations of rounds <= ``round_num`` (the store can no longer go
        back before it); returns the deleted files."""
        _check_round(round_num)
        gone = [p for r, p in self._generations() if r <= round_num]
        for p in gone:
            p.unlink()
        return gone

    def array(self, name: str) -> np.ndarray:
        """Every client's committed ``name`` as one read-only ``(num_clients, *shape)``
        numpy memmap (row i: ``client_ids[i]``; zeros where never written), e.g. to look
        at all personal heads at once. It maps the file: pages it touches count in the
        process's (reclaimable, file-backed) memory."""
        if name not in self.spec:
            raise KeyError(f"no client state {name!r}; the store holds {list(self.spec)}.")
        shape, dtype = self.spec[name]
        n = len(self.client_ids)
        if n * self._row_bytes(name) == 0:  # mmap cannot map an empty file
            return np.zeros((n, *shape), dtype=np.dtype(dtype))
        k = list(self.spec).index(name)
        return np.memmap(self._file(k), dtype=np.dtype(dtype), mode="r", shape=(n, *shape))

    def close(self) -> None:
        """Drop the writes not committed."""
        self._pending.clear()

    def nbytes(self) -> int:
        """Bytes of every client's state (the files' apparent size)."""
        return sum(len(self.client_ids) * self._row_bytes(n) for n in self.spec)

    def __repr__(self) -> str:
        return (
            f"ClientStateStore({str(self.directory)!r}, {len(self.client_ids)} clients, "
            f"{list(self.spec)}, round {self.round_num}, {self.num_initialised} initialised)"
        )

    # -- internals -------------------------------------------------------------------------------
    def _row(self, client_id: Any) -> int:
        try:
            return self._rows[client_id]
        except (KeyError, TypeError):
            raise KeyError(
                f"client {client_id!r} has no row in the client-state store "
                f"({len(self.client_ids)} clients, e.g. {self.client_ids[:3]})."
            ) from None

    def _file(self, k: int) -> Path:
        return self.directory / f"{k}.bin"

    def _generation(self, round_num: int) -> Path:
        return self.directory / GENERATIONS / f"round_{round_num:06d}.npz"

    def _generations(self) -> list[tuple[int, Path]]:
        folder = self.directory / GENERATIONS
        found = ((_GENERATION.match(p.name), p) for p in folder.iterdir())
        return sorted((int(m.group(1)), p) for m, p in found if m)

    def _row_bytes(self, name: str) -> int:
        shape, dtype = self.spec[name]
        return math.prod(shape) * torch.empty((), dtype=DTYPES[dtype]).element_size()

    def _read_rows(self, k: int, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` of file ``k`` as a new ``(len(rows), *shape)`` array (``os.pread``:
        nothing stays mapped, so the process's memory does not grow with the rows read)."""
        name = list(self.spec)[k]
        shape, dtype = self.spec[name]
        size = self._row_bytes(name)
        buf = bytearray(len(rows) * size)
        with open(self._file(k), "rb", buffering=0) as f:
            for i, r in enumerate(rows):
                got = os.preadv(f.fileno(), [memoryview(buf)[i * size : (i + 1) * size]],
                                int(r) * size)  # fmt: skip
                if got != size:
                    raise OSError(
                        f"{self._file(k)} is shorter than its {len(self.client_ids)} rows"
                    )
        return np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(len(rows), *shape)

    def _write_rows(self, k: int, rows: np.ndarray, values: Sequence[np.ndarray]) -> None:
        """Write ``values[i]`` at row ``rows[i]`` of file ``k`` and fsync it."""
        path = self._file(k)
        size = self._row_bytes(list(self.spec)[k])
        with writing(path):
            fd = os.open(path, os.O_WRONLY)
            try:
                for r, v in zip(rows, values, strict=True):
                    data = np.ascontiguousarray(v).tobytes()
                    if os.pwrite(fd, data, int(r) * size) != len(data):
                        raise OSError(f"short write to {path}")
                os.fsync(fd)
            finally:
                os.close(fd)

    def _write_index(self) -> None:
        """``index.json`` (atomically, its folder synced): the commit point."""
        index = {
            "format": FORMAT,
            "version": VERSION,
            "round": self.round_num,
            "client_ids": self.client_ids,
            "spec": {n: [list(s), d] for n, (s, d) in self.spec.items()},
            "initialised": np.flatnonzero(self._initialised).tolist(),
        }
        path = self.directory / INDEX
        with writing(path):
            with atomic_writer(path, "w") as f:
                json.dump(index, f, separators=(",", ":"))
            _fsync_directory(self.directory)

    def _undo(self, path: Path) -> int:
        """Write back the old rows a generation holds; returns the round it was applied on."""
        try:
            with np.load(path) as g:
                rows = g["rows"]
                old = [list(g[f"old_{k}"]) for k in range(len(self.spec))]
                initialised, on = g["initialised"], int(g["on"])
        except Exception as e:  # noqa: BLE001 (a damaged file: zip, pickle, key errors)
            raise ValueError(
                f"{path} is not a readable client-state generation ({type(e).__name__}: {e}); "
                "the store cannot go back past it: start afresh."
            ) from None
        for k in range(len(self.spec)):
            self._write_rows(k, rows, old[k])
        self._initialised[rows] = initialised
        return on

    def _check_files(self) -> None:
        """A one-line ValueError when a ``<k>.bin`` file is missing or not the size of its
        rows (a store damaged by hand or by a copy cut short)."""
        for k, name in enumerate(self.spec):
            path, want = self._file(k), len(self.client_ids) * self._row_bytes(name)
            size = path.stat().st_size if path.is_file() else None
            if size != want:
                what = "is missing" if size is None else f"has {size} bytes"
                raise ValueError(
                    f"{path} (client state {name!r}) {what}, not the {want} bytes of its "
                    f"{len(self.client_ids)} rows: the store is damaged and cannot be read; "
                    "start afresh."
                )

    def _undo_unfinished(self) -> None:
        """Undo generations newer than the index (a commit killed before its index was
        written may have written part of its rows), newest first."""
        for r, path in reversed(self._generations()):
            if r > self.round_num:
                self._undo(path)
                path.unlink()


def _check_round(round_num: Any) -> None:
    if isinstance(round_num, bool) or not isinstance(round_num, int):
        raise TypeError(f"round_num must be an integer, got {round_num!r}.")


def _folder(directory: str | os.PathLike) -> Path:
    """``directory`` as a Path (a NotADirectoryError naming it when it is a file)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(
            f"{directory} is a file; a client-state store is a folder: give a folder's path."
        )
    return directory


def _checked_index(index: dict[str, Any]) -> dict[str, Any]:
    """``index`` with the types :class:`ClientStateStore` reads (a KeyError, TypeError or
    ValueError otherwise)."""
    ids = _check_ids(index["client_ids"])
    spec = _check_spec({n: tuple(e) for n, e in index["spec"].items()})
    rows = index["initialised"]
    if not isinstance(index["round"], int) or index["round"] < 0:
        raise ValueError(f"round must be an integer >= 0, got {index['round']!r}")
    if not isinstance(rows, list) or not all(
        isinstance(r, int) and 0 <= r < len(ids) for r in rows
    ):
        raise ValueError(f"initialised must list rows in 0..{len(ids) - 1}")
    return {**index, "client_ids": ids, "spec": {n: list(e) for n, e in spec.items()}}


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where it cannot be done)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
