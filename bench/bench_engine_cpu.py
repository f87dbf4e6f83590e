"""Client-examples/s of the multi-client engine at K clients vs the per-client path, CPU.

One FedAvg round of K clients of ``--examples`` EMNIST-shaped examples each (random uint8
28x28 images, 62 classes), one local epoch of batches of 20, ``emnist_conv_dropout``, SGD
lr 0.02, in each of ``--precision`` (fp32, bf16: autocast): the engine
(``MultiClientEngine.fedavg_clients``, all K at once) against ``ClientWork`` client after
client in this process. The per-client path's rate does not depend on K, so it runs on the
first ``min(K, --per-client-clients)`` clients (all K with ``0``). Interleaved within each
repetition; best and median printed, then a table of the best rates and engine /
per-client. The engine is whichever fedp13n is on ``PYTHONPATH``, so the same command
measures an older checkout's engine. ``--device cuda`` runs both on a GPU.

    python bench/bench_engine_cpu.py --k 8,32,64 --precision fp32,bf16 --repeat 2
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import fedp13n
from fedp13n.algorithms.client_update import ClientTask, ClientWork, accuracy
from fedp13n.data.client_data import ClientDataset
from fedp13n.engine import MultiClientEngine
from fedp13n.execution.base import LocalRef
from fedp13n.models import emnist_conv_dropout
from fedp13n.utils.device import Compute, cpu_has_native_bf16

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fedavg import print_machine  # noqa: E402

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


def print_cpu_extras() -> None:
    """The SIMD flags that decide bf16's speed: AVX512-BF16 / AMX run it natively, else
    torch emulates it (slower than fp32)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    print(f"  {'simd flags':28s} {' '.join(simd) or '?'} (native bf16: {cpu_has_native_bf16()})")
    print(f"  {'torch threads':28s} {torch.get_num_threads()}")
    print(f"  {'fedp13n from':28s} {Path(fedp13n.__file__).parent}", flush=True)


def measure(k, precision, weights, args) -> dict[str, list[float]]:
    """Client-examples/s per repetition: per-client and engine at K, interleaved."""
    opt = functools.partial(torch.optim.SGD, lr=0.02)
    compute = Compute.resolve(device=args.device, precision=precision)
    work = ClientWork(
        emnist_conv_dropout, opt, F.cross_entropy, accuracy, 1, BATCH, True, seed=1,
        compute=compute,
    )  # fmt: skip
    data = _clients(k, args.examples)
    few = data[: min(k, args.per_client_clients or k)]
    engine = MultiClientEngine(emnist_conv_dropout, max_clients=k, compute=compute)

    def per_client(data=few):
        for i, d in enumerate(data):
            work(ClientTask(LocalRef(weights), d, i, 1))
        return len(data) * args.examples

    def batched(data=data):
        engine.fedavg_clients(
            weights, data, list(range(len(data))), optimizer=opt, epochs=1,
            batch_size=BATCH, shuffle=True, seed=1, round_num=1,
        )  # fmt: skip
        return len(data) * args.examples

    per_client(data=few[:2])  # warm-ups on 2 clients (and the engine's dry run)
    batched(data=data[:2])
    rates: dict[str, list[float]] = {"per-client": [], "engine": []}
    for _ in range(args.repeat):
        for name, fn in (("per-client", per_client), ("engine", batched)):
            start = time.perf_counter()
            n = fn()
            rates[name].append(n / (time.perf_counter() - start))
    for name, r in rates.items():
        print(
            f"K={k:3d} {name:10s} {precision}: best {max(r):8.1f} "
            f"median {statistics.median(r):8.1f} client-examples/s",
            flush=True,
        )
    return rates


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", default="8,32,64", help="engine K values (comma list)")
    ap.add_argument("--examples", type=int, default=40, help="examples per client")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--precision", default="fp32", help="comma list: fp32, bf16, tf32")
    ap.add_argument(
        "--per-client-clients", type=int, default=8,
        help="clients the per-client path runs per repetition (0: all K)",
    )  # fmt: skip
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    print_machine()
    print_cpu_extras()
    torch.manual_seed(0)
    weights = emnist_conv_dropout().state_dict()
    rows = []
    for precision in args.precision.split(","):
        for k in (int(v) for v in args.k.split(",")):
            r = measure(k, precision, weights, args)
            rows.append((precision, k, max(r["per-client"]), max(r["engine"])))
    print(f"\n{args.device}, best of {args.repeat}, client-examples/s")
    print("| precision | K | per-client | engine | engine / per-client |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for precision, k, pc, en in rows:
        print(f"| {precision} | {k} | {pc:,.1f} | {en:,.1f} | {en / pc:.2f} |")
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
