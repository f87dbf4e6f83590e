"""Checkpoints of the FedAvg server state, for long runs that must survive interruption.

A checkpoint holds the whole :class:`~fedp13n.algorithms.fed_avg.ServerState`: round
number, global weights and server optimizer state (e.g. momentum). Because every random
choice of a round derives from (seed, round, client id), nothing else is needed: resuming
from the checkpoint of round r with the same configuration gives bit-for-bit the weights
of an uninterrupted run.

Safety: the file holds only tensors, numbers, strings, lists and dicts, and is read with
``torch.load(weights_only=True)``, so loading a checkpoint never runs arbitrary code.
Writes go to a temporary file in the same directory, flushed to disk, then renamed over
the target, so a crash mid-write never leaves a truncated checkpoint.

Integrity: a checkpoint carries the SHA-256 of its contents (every tensor's bytes, every
number and key, in order), checked on every load: a file whose weights changed after it
was written (a flipped bit, an edit) is refused with a one-line error naming it, never
resumed from. Checkpoints written before the digest existed load unchecked.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import torch

from fedp13n.algorithms.fed_avg import ServerState
from fedp13n.rundir import layout as run_dir
from fedp13n.rundir.integrity import writing
from fedp13n.utils.fs import atomic_writer

FORMAT = "fedp13n.fedavg.ServerState"
VERSION = 1
_ROUND_FILE = re.compile(r"^round_(\d+)\.pt$")


def save_checkpoint(path: str | os.PathLike, state: ServerState) -> Path:
    """Write ``state`` to ``path`` atomically; returns the path."""
    if not isinstance(state, ServerState):
        raise TypeError(
            f"save_checkpoint needs a ServerState (what process.initialize() / next() "
            f"return), got {type(state).__name__}."
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "round_num": int(state.round_num),
        "model": dict(state.model),
        "optimizer_state": state.optimizer_state,
    }
    if state.method_state:  # e.g. SCAFFOLD's c; absent otherwise (older files unchanged)
        payload["method_state"] = dict(state.method_state)
    payload["sha256"] = content_digest(payload)
    with writing(path), atomic_writer(path, "wb") as f:  # a full disk: NoSpaceError
        torch.save(payload, f)
    return path


def content_digest(payload: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's contents (all but its ``sha256`` entry): keys, numbers,
    strings and every tensor's dtype, shape and bytes, in order."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(f"D{len(x)}:".encode())
            for k, v in x.items():
                walk(k)
                walk(v)
        elif isinstance(x, (list, tuple)):
            h.update(f"L{len(x)}:".encode())
            for v in x:
                walk(v)
        else:
            h.update(f"{type(x).__name__}:{x!r};".encode())

    walk({k: v for k, v in payload.items() if k != "sha256"})
    return h.hexdigest()


def load_checkpoint(path: str | os.PathLike) -> ServerState:
    """Read a checkpoint written by :func:`save_checkpoint` (no arbitrary unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise ValueError(
            f"{path} is not a readable fedp13n checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Delete it and resume from an "
            "earlier checkpoint."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fedp13n FedAvg checkpoint.")
    if payload.get("version") != VERSION:
        raise ValueError(
            f"{path} has checkpoint version {payload.get('version')}; this fedp13n reads "
            f"version {VERSION}."
        )
    recorded = payload.get("sha256")  # absent in checkpoints older than the digest
    if recorded is not None and recorded != content_digest(payload):
        raise ValueError(
            f"{path} fails its integrity check: its contents changed after fedp13n wrote it "
            "(a corrupted or edited file); delete it to resume from the checkpoint before it "
            "(or from round 0 if it is the only one)."
        )
    return ServerState(
        round_num=int(payload["round_num"]),
        model=dict(payload["model"]),
        optimizer_state=payload["optimizer_state"],
        method_state=dict(payload.get("method_state", {})),
    )


def checkpoint_rounds(directory: str | os.PathLike) -> list[int]:
    """Rounds with a checkpoint in a run directory, ascending."""
    folder = Path(directory) / run_dir.CHECKPOINTS
    if not folder.is_dir():
        return []
    rounds = (_ROUND_FILE.match(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in rounds if m)


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint of the highest round in a run directory, or ``None`` if there is none."""
    rounds = checkpoint_rounds(directory)
    return run_dir.checkpoint_path(Path(directory), rounds[-1]) if rounds else None
