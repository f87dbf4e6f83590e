"""Benchmark: the multi-client engine (GPU or CPU) against the per-client paths.

Two workloads on real writers from ``../shared/data/femnist_sample``, the conv-dropout
model (``emnist_conv_dropout``), batches of 20:

* **FedAvg round**: ``--clients`` clients, ``--fedavg-epochs`` local epochs, client SGD
  lr 0.02; client-examples per second (examples processed over all local epochs / wall
  time);
* **personalization evaluation**: ``--p13n-clients`` clients, baseline + the two stock
  strategies (SGD lr 0.02, Adam lr 0.002; ``--p13n-epochs`` epochs, evaluation after
  every epoch); clients per second.

Methods: the per-client path in this process (``InProcessExecutor(1)``, CPU, 1 thread),
the per-client path in ``--workers`` processes (``make_executor("processes")``), and the
engine (:class:`fedp13n.engine.MultiClientEngine`) with K = ``--k`` clients together, on
``--device`` in ``--precision`` and, beside it, on the CPU (``--cpu-engine``, default on
when the device is not the CPU anyway). For the engine on a GPU it prints the peak GPU
memory of each K (``torch.cuda.max_memory_allocated``). The engine's FedAvg number is the
clients' local training only; the per-client paths' includes the server's aggregation (a
few ms).

Every method runs once to warm up, then ``--repeat`` times; the best run is the estimate,
the median is printed beside it.

Run: ``python bench/bench_gpu.py`` (on a GPU machine; defaults: 64 clients, K 8 ... 256)
or ``python bench/bench_gpu.py --quick`` (CPU smoke run: 8 clients, one epoch, K 4 and 8).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fedavg import SAMPLE, make_process_executor, print_machine  # noqa: E402

from fedp13n.algorithms.fed_avg import (  # noqa: E402
    ClientSelection,
    build_weighted_fed_avg,
    sample_clients,
)
from fedp13n.data.datasets import load_dataset  # noqa: E402
from fedp13n.engine import MultiClientEngine, OptimizerSpec, strategy_from_builder  # noqa: E402
from fedp13n.execution.in_process import InProcessExecutor  # noqa: E402
from fedp13n.models import emnist_conv_dropout  # noqa: E402
from fedp13n.personalization import (  # noqa: E402
    build_evaluate_fn,
    build_personalization_eval,
    build_personalize_fn,
)
from fedp13n.utils.device import resolve_device, resolve_precision  # noqa: E402

LR = 0.02


def print_device(device: torch.device) -> None:
    cuda = torch.version.cuda or "none (CPU-only torch)"
    print(f"  {'torch / CUDA':28s} {torch.__version__} / {cuda}")
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        print(f"  {'GPU':28s} {p.name}, {p.total_memory / 2**30:.0f} GiB, cc {p.major}.{p.minor}")
        print(f"  {'cuDNN':28s} {torch.backends.cudnn.version()}")
    else:
        print(f"  {'GPU':28s} none used (device {device})")


def strategies(epochs: int) -> dict:
    common = dict(batch_size=20, num_epochs=epochs, num_epochs_per_eval=1)
    return {
        "sgd": functools.partial(
            build_personalize_fn, functools.partial(torch.optim.SGD, lr=0.02), **common
        ),
        "adam": functools.partial(
            build_personalize_fn, functools.partial(torch.optim.Adam, lr=0.002), **common
        ),
    }


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(SAMPLE))
    ap.add_argument("--device", default="auto", help="engine device: auto, cpu, cuda, cuda:N")
    ap.add_argument("--precision", default="fp32", help="engine precision: fp32, bf16, tf32")
    ap.add_argument("--clients", type=int, default=64, help="FedAvg round clients")
    ap.add_argument("--fedavg-epochs", type=int, default=1)
    ap.add_argument("--p13n-clients", type=int, default=64)
    ap.add_argument("--p13n-epochs", type=int, default=3)
    ap.add_argument("--k", default="8,16,32,64,128,256", help="engine K values (comma list)")
    ap.add_argument("--workers", type=int, default=2, help="processes of the per-client path")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--cpu-engine", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--skip-per-client", action="store_true", help="only the engine")
    ap.add_argument("--quick", action="store_true", help="CPU smoke sizes (seconds)")
    args = ap.parse_args(argv)
    if args.quick:
        args.clients, args.p13n_clients, args.p13n_epochs, args.repeat = 8, 8, 1, 1
        args.k = "4,8"
    if not Path(args.data_dir).exists():
        sys.exit(f"no data at {args.data_dir}: pass --data-dir with the femnist_sample folder.")
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    ks = [int(k) for k in args.k.split(",")]
    cpu_engine = args.cpu_engine if args.cpu_engine is not None else device.type != "cpu"
    torch.set_num_threads(1)  # per-client paths: 1 thread per process, as the executors do

    print("Machine")
    print_machine()
    print_device(device)
    train, test = load_dataset("emnist", data_dir=args.data_dir, progress=False)
    fed_ids = sample_clients(train.client_ids, args.clients, seed=0, round_num=1)
    p13n_ids = sample_clients(train.client_ids, args.p13n_clients, seed=1, round_num=1)
    fed_data = [train.create_dataset(c) for c in fed_ids]
    fed_examples = sum(len(d) for d in fed_data) * args.fedavg_epochs
    inputs = [
        {"client_id": c, "train_data": train.create_dataset(c), "test_data": test.create_dataset(c)}
        for c in p13n_ids
    ]
    strats = strategies(args.p13n_epochs)
    specs = [strategy_from_builder(n, b)[0] for n, b in strats.items()]
    torch.manual_seed(0)
    weights = {k: v.detach().clone() for k, v in emnist_conv_dropout().state_dict().items()}
    print(
        f"\nFedAvg round: {args.clients} clients, {fed_examples} client-examples "
        f"({args.fedavg_epochs} epochs); personalization: {args.p13n_clients} clients, "
        f"{sum(len(i['train_data']) for i in inputs)} train examples, 2 strategies x "
        f"{args.p13n_epochs} epochs + baseline; engine on {device}, {precision.name}"
    )

    # name -> (fedavg round fn, p13n fn, device)
    methods: dict[str, tuple[Callable[[], object], Callable[[], object], torch.device]] = {}
    executors = []
    if not args.skip_per_client:
        for label, ex in (
            ("per-client, in-process 1 thread", InProcessExecutor(1)),
            (f"per-client, {args.workers} processes", make_process_executor(args.workers)),
        ):
            executors.append(ex)
            fed = build_weighted_fed_avg(emnist_conv_dropout, seed=0, executor=ex)
            state = fed.initialize()
            sel = ClientSelection(train, fed_ids)
            ev = build_personalization_eval(
                emnist_conv_dropout,
                strats,
                build_evaluate_fn(),
                args.p13n_clients,
                seed=0,
                executor=ex,
            )
            methods[label] = (
                functools.partial(fed.next, state, sel),
                functools.partial(ev, weights, inputs),
                torch.device("cpu"),
            )
    devices = [device] + ([torch.device("cpu")] if cpu_engine and device.type != "cpu" else [])
    for dev in devices:
        prec = precision if dev == device else resolve_precision("fp32", dev)
        for k in ks:
            eng = MultiClientEngine(emnist_conv_dropout, device=dev, precision=prec, max_clients=k)
            clients = [(i["client_id"], i["train_data"], i["test_data"]) for i in inputs]
            methods[f"engine K={k}, {dev.type} {prec.name}"] = (
                functools.partial(
                    eng.fedavg_clients,
                    weights,
                    fed_data,
                    fed_ids,
                    optimizer=OptimizerSpec("sgd", LR),
                    epochs=args.fedavg_epochs,
                    batch_size=20,
                    shuffle=True,
                    seed=0,
                    round_num=1,
                ),
                functools.partial(eng.personalize, weights, clients, specs, seed=0),
                dev,
            )

    seconds: dict[str, list[list[float]]] = {m: [[], []] for m in methods}
    memory: dict[str, float] = {}
    try:
        for fed_fn, p13n_fn, _ in methods.values():  # warm-up
            fed_fn()
            p13n_fn()
        for r in range(args.repeat):
            for name, (fed_fn, p13n_fn, dev) in methods.items():
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                seconds[name][0].append(timed(fed_fn, dev))
                seconds[name][1].append(timed(p13n_fn, dev))
                if dev.type == "cuda":
                    memory[name] = torch.cuda.max_memory_allocated(dev) / 2**20
                print(
                    f"    rep {r + 1}/{args.repeat} {name:40s} fedavg {seconds[name][0][-1]:7.2f} s"
                    f"   p13n {seconds[name][1][-1]:7.2f} s"
                )
    finally:
        for ex in executors:
            ex.close()

    print(f"\nResults (best of {args.repeat}; median in brackets)")
    print(f"  {'method':40s} {'FedAvg ex/s':>20s} {'p13n clients/s':>20s} {'GPU MiB':>9s}")
    base = None
    for name, (fed_s, p13n_s) in seconds.items():
        fed_best, p_best = fed_examples / min(fed_s), args.p13n_clients / min(p13n_s)
        fed_med = fed_examples / statistics.median(fed_s)
        p_med = args.p13n_clients / statistics.median(p13n_s)
        base = base or (fed_best, p_best)
        mem = f"{memory[name]:9.0f}" if name in memory else f"{'-':>9s}"
        print(
            f"  {name:40s} {fed_best:9.0f} ({fed_med:8.0f}) {p_best:9.2f} ({p_med:8.2f}) {mem}"
            f"   x{fed_best / base[0]:.2f} / x{p_best / base[1]:.2f}"
        )
    print("  (x: ratio to the first method, FedAvg / personalization)")


if __name__ == "__main__":
    main()
