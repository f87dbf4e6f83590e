"""Dropout masks of K clients, drawn as the per-client path draws them.

At every step, for each client, the masks of every dropout call of the forward pass
(:class:`~fedp13n.engine.functional.MaskLayer`, in forward order) are drawn from the
client's ``torch.Generator`` for the client's real batch size ``n``: FastDropout's
``random_bytes(n * prod(per))`` or ``nn.Dropout``'s ``bernoulli_(1 - p)`` then ``/ (1 - p)``
on an ``(n, *per)`` float32 tensor, the very calls the per-client layer makes on torch's
global generator, which the per-client path seeds as the client's generator is seeded.
Rows past ``n`` (padding) are zero.

Drawing is CPU work (a CPU generator: the per-client path's bytes) that would leave a GPU
waiting at large K, so on a GPU :class:`MaskPrefetcher` draws them a few steps ahead in a
pool of threads (clients split among the threads; each client's generator is used by one
thread, step after step, so the bytes are exactly the same) into pinned memory, copied to
the device without blocking.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence

import numpy as np
import torch

from fedp13n.engine.functional import MaskLayer
from fedp13n.models.layers import random_bytes


def default_mask_threads(device: torch.device) -> int:
    """Threads drawing dropout masks ahead: none on a CPU (its cores compute the steps),
    on a GPU up to 8, leaving a core to the main thread."""
    if device.type == "cpu":
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores - 1))


def empty_masks(layers: Sequence[MaskLayer], K: int, B: int, pin: bool) -> list[torch.Tensor]:
    """Uninitialised ``(K, B, *per)`` buffers, one per layer."""
    return [torch.empty((K, B, *m.per), dtype=m.dtype, pin_memory=pin) for m in layers]


def fill_masks(
    bufs: Sequence[torch.Tensor],
    layers: Sequence[MaskLayer],
    generators: Sequence[torch.Generator],
    counts: np.ndarray,
    clients: range,
) -> None:
    """Draw the masks of ``clients`` (positions in ``counts`` / ``generators``) into
    ``bufs``: for each client, every layer in forward order, ``counts[k]`` rows."""
    for k in clients:
        n = int(counts[k])
        for layer, buf in zip(layers, bufs, strict=True):
            rows = buf[k]
            if n:
                if layer.kind == "bytes":
                    drawn = random_bytes(n * math.prod(layer.per), generators[k])
                    rows[:n].copy_(drawn.view(n, *layer.per))
                else:  # F.dropout on the CPU: empty_like(x).bernoulli_(1 - p).div_(1 - p)
                    noise = torch.empty((n, *layer.per))
                    noise.bernoulli_(1 - layer.p, generator=generators[k])
                    rows[:n].copy_(noise.div_(1 - layer.p))
            if n < len(rows):
                rows[n:].zero_()


def draw_masks(
    layers: Sequence[MaskLayer],
    generators: Sequence[torch.Generator],
    counts: np.ndarray,
    batch: int,
    device: torch.device,
) -> list[torch.Tensor]:
    """One step's masks, drawn now, on ``device``."""
    bufs = empty_masks(layers, len(counts), batch, pin=False)
    fill_masks(bufs, layers, generators, counts, range(len(counts)))
    return [b.to(device) for b in bufs]


class MaskPrefetcher:
    """The masks of every step of a phase (``counts``: ``(T, K)`` real batch sizes),
    drawn up to ``depth`` steps ahead of the forward passes by ``threads`` threads, each
    over a contiguous range of clients (see the module docstring)."""

    def __init__(
        self,
        generators: Sequence[torch.Generator],
        counts: np.ndarray,
        layers: Sequence[MaskLayer],
        batch: int,
        threads: int,
        device: torch.device,
        depth: int = 3,
    ) -> None:
        self.T, self.K = counts.shape
        self.counts = counts
        self.generators = list(generators)
        self.layers = list(layers)
        self.batch = batch
        self.device = device
        self.depth = depth
        self.pin = device.type == "cuda"
        self._cond = threading.Condition()
        self._bufs: dict[int, list[torch.Tensor]] = {}
        self._done: dict[int, int] = {}
        self._consumed = -1
        self._error: BaseException | None = None
        self._stop = False
        n = max(1, min(threads, self.K))
        bounds = np.linspace(0, self.K, n + 1).round().astype(int)
        self._threads = [
            threading.Thread(target=self._run, args=(int(lo), int(hi)), daemon=True)
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
            if hi > lo
        ]
        for t in self._threads:
            t.start()

    def _buffers(self, t: int) -> list[torch.Tensor]:  # under the lock
        bufs = self._bufs.get(t)
        if bufs is None:
            bufs = self._bufs[t] = empty_masks(self.layers, self.K, self.batch, self.pin)
        return bufs

    def _run(self, lo: int, hi: int) -> None:
        try:
            for t in range(self.T):
                with self._cond:
                    self._cond.wait_for(lambda t=t: self._stop or t - self._consumed <= self.depth)
                    if self._stop:
                        return
                    bufs = self._buffers(t)
                fill_masks(bufs, self.layers, self.generators, self.counts[t], range(lo, hi))
                with self._cond:
                    self._done[t] = self._done.get(t, 0) + 1
                    self._cond.notify_all()
        except BaseException as exc:  # handed to the main thread
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def step(self, t: int) -> list[torch.Tensor]:
        """Step ``t``'s masks on the device (steps are taken in order)."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._error is not None or self._done.get(t, 0) == len(self._threads)
            )
            if self._error is not None:
                raise RuntimeError(f"drawing dropout masks failed: {self._error}") from self._error
            bufs = self._bufs.pop(t)
            self._done.pop(t)
            self._consumed = t
            self._cond.notify_all()
        if self.device.type != "cpu":
            bufs = [b.to(self.device, non_blocking=self.pin) for b in bufs]
        return bufs

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()
