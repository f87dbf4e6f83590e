"""Benchmark: personalization evaluation speed (TFF's ``build_personalization_eval``).

The issue's setting: 50 real writers from ``../shared/data/femnist_sample``, the two stock
strategies of Jiang et al. 2019's experiment (SGD lr 0.02 and Adam lr 0.002; batches of
20; 3 epochs; evaluation after every epoch) plus the baseline evaluation of the global
model, through :func:`fedp13n.personalization.build_personalization_eval` with 2 worker
processes and in-process. Reported:

* clients per second (a client = baseline + both strategies);
* training examples per second (examples processed by fine-tuning, all strategies);
* client-epochs with evaluation per second, TFF's unit: one client fine-tuning one epoch
  with one evaluation. TFF 0.87 on the issue's machines: ~1.5 s for 5 clients fine-tuning
  one epoch with evaluation, i.e. ~3.3/s; the goal is at least 3x that.

Each executor runs once to warm up (process start, first model build) and then
``--repeat`` times; the best run is the estimate, the median is printed too.

Run: ``python bench/bench_p13n.py`` (the issue's setting, about a minute on 2 cores) or
``python bench/bench_p13n.py --clients 4 --epochs 1 --repeat 1`` (smoke run, seconds).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections import OrderedDict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fedavg import SAMPLE, make_process_executor, print_machine  # noqa: E402

from fedp13n.algorithms.fed_avg import sample_clients  # noqa: E402
from fedp13n.data.datasets import load_dataset  # noqa: E402
from fedp13n.execution.in_process import InProcessExecutor  # noqa: E402
from fedp13n.models import emnist_conv_dropout  # noqa: E402
from fedp13n.personalization import (  # noqa: E402
    build_evaluate_fn,
    build_personalization_eval,
    build_personalize_fn,
)

TFF_CLIENT_EPOCHS_PER_S = 5 / 1.5  # TFF 0.87, issue's machines: 5 client-epochs in ~1.5 s
GOAL_FACTOR = 3.0


def strategies(epochs: int, batch_size: int, fused_adam: bool = False) -> OrderedDict:
    """The two stock strategies of TFF's personalization experiment (``fused_adam``: torch's
    one-kernel Adam step, same update up to float rounding)."""
    common = dict(batch_size=batch_size, num_epochs=epochs, num_epochs_per_eval=1)
    adam = functools.partial(torch.optim.Adam, lr=0.002, **({"fused": True} if fused_adam else {}))
    return OrderedDict(
        sgd=functools.partial(
            build_personalize_fn, functools.partial(torch.optim.SGD, lr=0.02), **common
        ),
        adam=functools.partial(build_personalize_fn, adam, **common),
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data-dir", default=str(SAMPLE))
    ap.add_argument(
        "--fused-adam", action="store_true", help="Adam(fused=True) for the adam strategy"
    )
    args = ap.parse_args(argv)
    if not Path(args.data_dir).exists():
        sys.exit(f"no data at {args.data_dir}: pass --data-dir with the femnist_sample folder.")

    print("Machine")
    print_machine()
    train, test = load_dataset("emnist", data_dir=args.data_dir, progress=False)
    ids = sample_clients(train.client_ids, args.clients, seed=0, round_num=0)
    inputs = [
        {"client_id": c, "train_data": train.create_dataset(c), "test_data": test.create_dataset(c)}
        for c in ids
    ]
    n_train = sum(len(i["train_data"]) for i in inputs)
    n_test = sum(len(i["test_data"]) for i in inputs)
    strats = strategies(args.epochs, args.batch_size, args.fused_adam)
    train_examples = n_train * args.epochs * len(strats)
    client_epochs = args.clients * args.epochs * len(strats)
    fused = " (fused Adam)" if args.fused_adam else ""
    print(
        f"\n{args.clients} clients ({n_train} train, {n_test} test examples), strategies "
        f"{list(strats)}{fused}, {args.epochs} epochs, batch {args.batch_size}, eval every epoch: "
        f"{train_examples} training examples, {client_epochs} client-epochs with evaluation"
    )
    torch.manual_seed(0)
    weights = emnist_conv_dropout().state_dict()

    executors = {
        "in-process, 1 thread": InProcessExecutor(1),
        f"{args.workers} worker processes x 1 thread": make_process_executor(args.workers),
    }
    seconds: dict[str, list[float]] = {k: [] for k in executors}
    try:
        evals = {
            k: build_personalization_eval(
                emnist_conv_dropout,
                strats,
                build_evaluate_fn(),
                max_num_samples=args.clients,
                seed=0,
                executor=ex,
            )
            for k, ex in executors.items()
        }
        for ev in evals.values():  # warm-up
            ev(weights, inputs[: max(2, args.workers)])
        for r in range(args.repeat):
            for name, ev in evals.items():
                t = time.perf_counter()
                result = ev(weights, inputs)
                seconds[name].append(time.perf_counter() - t)
                assert len(result.client_ids) == args.clients
                print(f"    rep {r + 1}/{args.repeat} {name:32s} {seconds[name][-1]:7.2f} s")
    finally:
        for ex in executors.values():
            ex.close()

    print(f"\nResults (best of {args.repeat}; median in brackets)")
    head = f"  {'executor':32s} {'clients/s':>16s} {'train ex/s':>16s} {'client-epochs/s':>18s}"
    print(head + f" {'x TFF':>6s}")
    for name, v in seconds.items():
        best, med = min(v), statistics.median(v)
        ce = client_epochs / best
        print(
            f"  {name:32s} {args.clients / best:7.2f} ({args.clients / med:6.2f}) "
            f"{train_examples / best:7.0f} ({train_examples / med:6.0f}) "
            f"{ce:8.2f} ({client_epochs / med:6.2f}) {ce / TFF_CLIENT_EPOCHS_PER_S:6.2f}"
        )
    print(
        f"\n  TFF 0.87 on the issue's machines: {TFF_CLIENT_EPOCHS_PER_S:.1f} client-epochs with "
        f"evaluation per second; goal >= {GOAL_FACTOR:.0f}x"
    )


if __name__ == "__main__":
    main()
