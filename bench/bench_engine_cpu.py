"""Client-examples/s of the multi-client engine at K clients vs the per-client path, CPU.

One FedAvg round of K clients of ``--examples`` EMNIST-shaped examples each (random uint8
28x28 images, 62 classes), one local epoch of batches of 20, ``emnist_conv_dropout``, SGD
lr 0.02, fp32 (or ``--precision bf16``): the engine (``MultiClientEngine.fedavg_clients``,
all K at once) against ``ClientWork`` client after client in this process. Interleaved
within each repetition; best and median printed. The engine is whichever fedp13n is on
``PYTHONPATH``, so the same command measures an older checkout's engine.

    python bench/bench_engine_cpu.py --k 8,32 --repeat 2
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

import fedp13n
from fedp13n.algorithms.client_update import ClientTask, ClientWork, accuracy
from fedp13n.data.client_data import ClientDataset
from fedp13n.engine import MultiClientEngine
from fedp13n.execution.base import LocalRef
from fedp13n.models import emnist_conv_dropout
from fedp13n.utils.device import Compute

BATCH = 20


def _clients(k: int, n: int) -> list[ClientDataset]:
    rng = np.random.default_rng(0)
    return [
        ClientDataset(
            rng.integers(0, 256, (n, 28, 28)).astype(np.uint8),
            rng.integers(0, 62, n).astype(np.int64),
        )
        for _ in range(k)
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", default="8,32", help="engine K values (comma list)")
    ap.add_argument("--examples", type=int, default=40, help="examples per client")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--precision", default="fp32")
    args = ap.parse_args(argv)
    print(
        f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
        f"load {os.getloadavg()[0]:.1f}, torch {torch.__version__}, fedp13n from "
        f"{os.path.dirname(fedp13n.__file__)}, {torch.get_num_threads()} threads"
    )
    opt = functools.partial(torch.optim.SGD, lr=0.02)
    torch.manual_seed(0)
    weights = emnist_conv_dropout().state_dict()
    work = ClientWork(
        emnist_conv_dropout, opt, F.cross_entropy, accuracy, 1, BATCH, True, seed=1,
        compute=Compute.resolve(precision=args.precision),
    )  # fmt: skip
    for k in (int(v) for v in args.k.split(",")):
        data = _clients(k, args.examples)
        engine = MultiClientEngine(emnist_conv_dropout, max_clients=k, precision=args.precision)

        def per_client(data=data):
            for i, d in enumerate(data):
                work(ClientTask(LocalRef(weights), d, i, 1))

        def batched(data=data, engine=engine):
            engine.fedavg_clients(
                weights, data, list(range(len(data))), optimizer=opt, epochs=1,
                batch_size=BATCH, shuffle=True, seed=1, round_num=1,
            )  # fmt: skip

        methods = {"per-client": per_client, f"engine K={k}": batched}
        for fn in methods.values():  # warm-up (and the engine's dry run)
            fn(data=data[:2]) if fn is per_client else fn()
        rates: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(args.repeat):
            for name, fn in methods.items():
                start = time.perf_counter()
                fn()
                rates[name].append(k * args.examples / (time.perf_counter() - start))
        for name, r in rates.items():
            print(
                f"K={k:3d} {name:14s} {args.precision}: best {max(r):7.1f} "
                f"median {statistics.median(r):7.1f} client-examples/s"
            )
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
