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

Backend comparison (``--compare``): the same 2-worker x 1-thread pool built three ways, on
two workloads, interleaved within each repetition and reported as ratios to the current
pipe protocol: FedAvg rounds (as above) and personalization evaluation
(``build_personalization_eval``, the two stock strategies of ``bench_p13n.py``). Backends:
``pipes``: :class:`LocalProcessExecutor` (hand-written pipe protocol); ``pipes-before``:
an earlier version of it given by ``--before FILE`` (e.g. ``git show
REV:src/fedp13n/execution/process_pool.py > /tmp/pp.py``); ``loky``: a minimal executor on
``loky.ProcessPoolExecutor`` (spawned workers with an initializer setting the torch
threads, chunks of :mod:`fedp13n.execution.chunks`, the same shared refs), the candidate
evaluated for issue 9. Final weights / metrics are checked identical across backends.
``python bench/bench_executors.py --compare --before /tmp/pp.py --warmup 0 --rounds 2``
(repetition 0 is an untimed warm-up of every backend and workload).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cloudpickle
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fedavg import SAMPLE, print_machine  # noqa: E402

from fedp13n.algorithms import ClientSelection, build_weighted_fed_avg, sample_clients
from fedp13n.data.client_data import ClientData
from fedp13n.data.datasets import load_dataset
from fedp13n.execution import Executor, InProcessExecutor, LocalProcessExecutor, SharedRef, sharing
from fedp13n.execution.chunks import chunks, default_chunk_size, results_or_raise, run_chunk
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


# -- backend comparison (--compare) ------------------------------------------------------------
def _loky_init(threads: int) -> None:
    torch.set_num_threads(threads)


class LokyExecutor(Executor):
    """The candidate: the Executor interface on ``loky.ProcessPoolExecutor`` (spawned
    workers, cloudpickle, worker-death detection), with fedp13n's chunks and shared refs."""

    def __init__(self, num_workers: int, threads_per_worker: int = 1) -> None:
        from loky import ProcessPoolExecutor

        self.threads_per_worker = threads_per_worker
        self._n = num_workers
        self._pool = ProcessPoolExecutor(
            max_workers=num_workers, initializer=_loky_init, initargs=(threads_per_worker,)
        )
        self._tmpdir = sharing.make_share_dir()

    @property
    def num_workers(self) -> int:
        return self._n

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
        tasks = list(tasks)
        size = default_chunk_size(len(tasks), self._n)
        futures = [
            self._pool.submit(run_chunk, fn, s, tasks[s : s + c])
            for s, c in chunks(len(tasks), size)
        ]
        out: list[Any] = []
        for f in futures:
            out.extend(results_or_raise(f.result(), "in a loky worker"))
        return out

    def share(self, obj: Any) -> SharedRef[Any]:
        if sharing.shares_by_path(obj):
            path = obj.to_shared_path(None) or obj.to_shared_path(
                Path(self._tmpdir) / uuid.uuid4().hex
            )
            return sharing.PathRef(type(obj), path, local=obj)
        token = uuid.uuid4().hex
        file = os.path.join(self._tmpdir, token + ".pkl")
        with open(file, "wb") as f:
            cloudpickle.dump(obj, f)
        return sharing.FileRef(token, file, local=obj)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        sharing.remove_share_dir(self._tmpdir)


def _load_before(file: str) -> Any:
    """Import an earlier process_pool.py under another name (workers import it too)."""
    d = tempfile.mkdtemp(prefix="bench-before-")
    shutil.copy(file, os.path.join(d, "_before_process_pool.py"))
    sys.path.insert(0, d)  # spawned workers get the driver's sys.path
    return importlib.import_module("_before_process_pool")


def compare(args: argparse.Namespace, data: ClientData) -> None:
    from bench_p13n import strategies

    from fedp13n.data.datasets import load_dataset as _load
    from fedp13n.personalization import build_evaluate_fn, build_personalization_eval

    backends: dict[str, Callable[[], Executor]] = {
        "pipes": lambda: LocalProcessExecutor(num_workers=2),
        "loky": lambda: LokyExecutor(2),
    }
    if args.before:
        before = _load_before(args.before)
        backends = {"pipes-before": lambda: before.LocalProcessExecutor(num_workers=2), **backends}
    executors = {name: make() for name, make in backends.items()}

    # personalization inputs: test split of the same writers when the sample exists
    if (SAMPLE / "fed_emnist_train.h5").is_file():
        _, test = _load("emnist", data_dir=SAMPLE, progress=False)
    else:
        test = data
    p13n_ids = [c for c in sorted(data.client_ids) if c in test][: args.p13n_clients]
    inputs = [
        {"client_id": c, "train_data": data.create_dataset(c), "test_data": test.create_dataset(c)}
        for c in p13n_ids
    ]
    torch.manual_seed(SEED)
    weights = emnist_conv_dropout().state_dict()
    strats = strategies(1, args.batch_size)

    def fedavg(ex: Executor) -> tuple[float, Any]:
        rate, _, _, w = run_config(ex, data, args)
        return rate, w

    def p13n(ex: Executor) -> tuple[float, Any]:
        ev = build_personalization_eval(
            emnist_conv_dropout, strats, build_evaluate_fn(), seed=SEED, executor=ex
        )
        t = time.perf_counter()
        out = ev(weights, inputs)
        return len(inputs) / (time.perf_counter() - t), out

    workloads = {"fedavg ex/s": fedavg, "p13n clients/s": p13n}
    rates: dict[tuple[str, str], list[float]] = {}
    outputs: dict[tuple[str, str], Any] = {}
    try:
        for rep in range(args.repeat + 1):  # repetition 0 warms up (imports, model build)
            for wl, run in workloads.items():
                order = list(executors) if rep % 2 == 0 else list(reversed(executors))
                for name in order:
                    rate, out = run(executors[name])
                    outputs[(wl, name)] = out
                    if rep:
                        rates.setdefault((wl, name), []).append(rate)
                    print(f"  rep {rep} {wl:15s} {name:13s} {rate:8.2f}", flush=True)
    finally:
        for ex in executors.values():
            ex.close()
    print(f"load average after: {load_average()}")
    print(f"\nbest of {args.repeat} (median), ratio to 'pipes' (best; median):")
    for wl in workloads:
        base = rates[(wl, "pipes")]
        for name in executors:
            v = rates[(wl, name)]
            same = _same(outputs[(wl, name)], outputs[(wl, "pipes")])
            print(
                f"  {wl:15s} {name:13s} {max(v):8.2f} ({statistics.median(v):8.2f})  "
                f"x{max(v) / max(base):.3f}; x{statistics.median(v) / statistics.median(base):.3f}"
                f"  {'identical' if same else 'RESULTS DIFFER'}"
            )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and all(isinstance(v, torch.Tensor) for v in a.values()):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return repr(a) == repr(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100, help="clients to sample from")
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--ray", action="store_true", help="also time a local Ray instance")
    parser.add_argument("--compare", action="store_true", help="compare pool backends")
    parser.add_argument("--before", help="an earlier process_pool.py for --compare")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions for --compare")
    parser.add_argument("--p13n-clients", type=int, default=10, help="clients for --compare")
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
    if args.compare:
        compare(args, data)
        return

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
