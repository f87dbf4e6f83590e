"""Characters/s of FedAvg client work on Shakespeare, per client and batched (engine), CPU.

One FedAvg round of K clients, each ``--examples`` sequences of 80 characters (TFF's
Shakespeare examples: the first ``--examples`` of K real roles of
``../shared/data/shakespeare_sample`` when it is there, else random ids with TFF's
end-padding), one local epoch of batches of 4 (TFF's Shakespeare client batch),
``shakespeare_rnn`` (TFF's ``create_recurrent_model``, 90 outputs), client SGD lr 1, the
task's loss and accuracy (pad targets left out): ``ClientWork`` client after client in this
process (torch's fused LSTM kernel) against ``MultiClientEngine.fedavg_clients`` (all K at
once under ``torch.func.vmap``: the LSTM's plain-op time loop). characters/s = trained
sequences x 80 / seconds. Interleaved, best and median of ``--repeat``.

    python bench/bench_shakespeare.py --k 8 --examples 16 --repeat 2
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

from fedp13n.algorithms.client_update import ClientTask, ClientWork
from fedp13n.data.client_data import ClientDataset
from fedp13n.data.shakespeare import SEQUENCE_LENGTH, VOCAB_SIZE, read_shakespeare_dir
from fedp13n.engine import MultiClientEngine
from fedp13n.execution.base import LocalRef
from fedp13n.models.shakespeare import shakespeare_rnn
from fedp13n.tasks import get_task, task_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fedavg import print_machine  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare_sample"
BATCH = 4


def _clients(k: int, n: int) -> tuple[list[ClientDataset], str]:
    """K clients of n sequences: real roles with at least n examples, else random ids."""
    if (SAMPLE / "shakespeare_train.h5").is_file():
        train = read_shakespeare_dir(SAMPLE)[0]
        big = [c for c in train.client_ids if train.size(c) >= n][:k]
        if len(big) == k:
            out = [train.create_dataset(c) for c in big]
            return [ClientDataset(np.asarray(d.x)[:n], np.asarray(d.y)[:n]) for d in out], "sample"
    rng = np.random.default_rng(0)
    out = []
    for _ in range(k):
        x = rng.integers(1, VOCAB_SIZE, (n, SEQUENCE_LENGTH)).astype(np.int32)
        y = np.concatenate([x[:, 1:], rng.integers(1, VOCAB_SIZE, (n, 1))], 1).astype(np.int32)
        x[-1, 50:], y[-1, 49:] = 0, 0  # a snippet's last sequence: padding at the end
        out.append(ClientDataset(x, y))
    return out, "random ids"


def measure(k: int, weights, args) -> dict[str, list[float]]:
    """Characters/s per repetition: per-client and engine at K, interleaved."""
    loss = task_loss(get_task("shakespeare"))
    model_fn = functools.partial(shakespeare_rnn, VOCAB_SIZE)
    opt = functools.partial(torch.optim.SGD, lr=1.0)
    work = ClientWork(model_fn, opt, loss, loss.accuracy, 1, BATCH, True, seed=1)
    data, source = _clients(k, args.examples)
    print(f"  {'clients':28s} K={k}, {args.examples} sequences each ({source})", flush=True)
    engine = MultiClientEngine(model_fn, max_clients=k)
    chars = args.examples * SEQUENCE_LENGTH

    def per_client(data=data):
        for i, d in enumerate(data):
            work(ClientTask(LocalRef(weights), d, i, 1))
        return len(data) * chars

    def batched(data=data):
        engine.fedavg_clients(
            weights, data, list(range(len(data))), optimizer=opt, epochs=1,
            batch_size=BATCH, shuffle=True, seed=1, round_num=1, ignore_ids=(0,),
        )  # fmt: skip
        return len(data) * chars

    per_client(data=data[:1])  # warm-ups (and the engine's dry run)
    batched(data=data[:2])
    rates: dict[str, list[float]] = {"per-client": [], "engine": []}
    for _ in range(args.repeat):
        for name, fn in (("per-client", per_client), ("engine", batched)):
            start = time.perf_counter()
            n = fn()
            rates[name].append(n / (time.perf_counter() - start))
    for name, r in rates.items():
        print(f"K={k:3d} {name:10s}: best {max(r):9.1f} median {statistics.median(r):9.1f} "
              "characters/s", flush=True)  # fmt: skip
    return rates


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", default="8", help="engine K values (comma list)")
    ap.add_argument("--examples", type=int, default=16, help="sequences per client")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print_machine()
    print(f"  {'torch threads':28s} {torch.get_num_threads()}")
    print(f"  {'load at the start':28s} {os.getloadavg()[0]:.1f}", flush=True)
    torch.manual_seed(0)
    weights = shakespeare_rnn(VOCAB_SIZE).state_dict()
    rows = []
    for k in (int(v) for v in args.k.split(",")):
        r = measure(k, weights, args)
        rows.append((k, max(r["per-client"]), max(r["engine"])))
    print(f"\nCPU, best of {args.repeat}, characters/s (client-examples/s x 80)")
    print("| K | per-client | engine | engine / per-client |")
    print("| ---: | ---: | ---: | ---: |")
    for k, pc, en in rows:
        print(f"| {k} | {pc:,.0f} ({pc / 80:.1f} ex/s) | {en:,.0f} ({en / 80:.1f} ex/s) "
              f"| {en / pc:.2f} |")  # fmt: skip
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
