"""Benchmark: where should FedAvg's local training run on one machine?

Compares, for local training of TFF's conv-dropout EMNIST-62 CNN (Jiang et al. 2019's
model, ``fedp13n.models.emnist.emnist_conv_dropout``; 1 epoch, batches of 20, client SGD
lr 0.02), in training examples per second over whole FedAvg rounds:

* ``in-process x1``: one process, one torch thread (the reference for the numbers);
* ``in-process x2threads``: one process, two torch threads (torch's usual way to use 2 cores);
* ``processes 2x1``: two worker processes with one torch thread each (the ``auto`` default);
* ``ray 2x1`` (with ``--ray``): the same on a local Ray instance.

Clients are the real writers of ``../shared/data/femnist_sample`` (random pixels if the
sample is absent). Each configuration first runs ``--warmup`` untimed rounds (worker start,
model build), then ``--rounds`` timed rounds with the same sampled clients for every
configuration, and the final weights are checked to be bit-identical across the
single-thread configurations. Numbers on a machine shared with other work are noisy: the
load average is printed before and after.

Run: ``python bench/bench_executors.py`` (10 clients per round, 3 timed rounds) or
``python bench/bench_executors.py --clients-per-round 4 --rounds 1 --warmup 1`` (smoke run).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fedavg import SAMPLE, print_machine  # noqa: E402

from fedp13n.algorithms import ClientSelection, build_weighted_fed_avg, sample_clients
from fedp13n.data.client_data import ClientData
from fedp13n.data.datasets import load_dataset
from fedp13n.execution import Executor, InProcessExecutor, LocalProcessExecutor
from fedp13n.models.emnist import emnist_conv_dropout

SEED = 0


def load_clients(num_clients: int) -> tuple[ClientData, str]:
    """The first ``num_clients`` writers of the sample's train split (synthetic if absent)."""
    if (SAMPLE / "fed_emnist_train.h5").is_file():
        train, _ = load_dataset("emnist", data_dir=SAMPLE, progress=False)
        return train.subset(sorted(train.client_ids)[:num_clients]), f"femnist_sample ({SAMPLE})"
    train, _ = load_dataset("synthetic", num_clients=num_clients, seed=SEED, progress=False)
    return train, "synthetic writers (femnist_sample not found)"


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def run_config(
    executor: Executor, data: ClientData, args: argparse.Namespace
) -> tuple[float, int, float, dict[str, torch.Tensor]]:
    """Warm-up rounds, then timed rounds: (examples/s, examples, seconds, final weights)."""
    process = build_weighted_fed_avg(
        emnist_conv_dropout, batch_size=args.batch_size, seed=SEED, executor=executor
    )
    state = process.initialize()
    examples, seconds = 0, 0.0
    for r in range(1, args.warmup + args.rounds + 1):
        ids = sample_clients(data.client_ids, args.clients_per_round, seed=SEED, round_num=r)
        start = time.perf_counter()
        state, metrics = process.next(state, ClientSelection(data, ids))
        if r > args.warmup:
            seconds += time.perf_counter() - start
            examples += metrics.num_examples
    return examples / seconds, examples, seconds, process.get_model_weights(state)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100, help="clients to sample from")
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--ray", action="store_true", help="also time a local Ray instance")
    args = parser.parse_args()

    data, source = load_clients(args.clients)
    print("machine:")
    print_machine()
    print(f"data: {source}: {len(data)} clients, {data.num_examples} examples")
    print(
        f"work: conv-dropout CNN, {args.clients_per_round} clients/round, batch "
        f"{args.batch_size}, 1 epoch; {args.warmup} warm-up + {args.rounds} timed rounds"
    )
    print(f"load average before: {load_average()}")

    configs: list[tuple[str, object]] = [
        ("in-process x1", lambda: InProcessExecutor(threads_per_worker=1)),
        ("in-process x2threads", lambda: InProcessExecutor(threads_per_worker=2)),
        ("processes 2x1", lambda: LocalProcessExecutor(num_workers=2, threads_per_worker=1)),
    ]
    if args.ray:
        import ray

        from fedp13n.execution.ray_executor import RayExecutor

        def make_ray() -> Executor:
            ray.init(num_cpus=2, include_dashboard=False, address="local", log_to_driver=False)
            return RayExecutor(num_workers=2)

        configs.append(("ray 2x1", make_ray))

    results: dict[str, float] = {}
    reference: dict[str, torch.Tensor] | None = None
    for name, make in configs:
        executor = make()  # type: ignore[operator]
        try:
            rate, n, secs, weights = run_config(executor, data, args)
        finally:
            executor.close()
            if name.startswith("ray"):
                ray.shutdown()
        results[name] = rate
        same = ""
        if "x1" in name or "2x1" in name:
            if reference is None:
                reference = weights
            else:
                equal = all(torch.equal(reference[k], weights[k]) for k in reference)
                same = (
                    "  (weights bit-identical to in-process x1)" if equal else "  (WEIGHTS DIFFER)"
                )
        print(f"{name:>22}: {rate:8.1f} examples/s  ({n} examples in {secs:.2f} s){same}")

    print(f"load average after: {load_average()}")
    base = results["in-process x2threads"]
    for name, rate in results.items():
        print(f"{name:>22}: {rate / base:5.2f}x one process with 2 threads")


if __name__ == "__main__":
    sys.exit(main())
