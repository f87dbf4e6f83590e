"""Benchmark: fedp13n on a GPU, every way it can use one, against the CPU the same day.

Two workloads on real writers from ``../shared/data/femnist_sample`` (tiled with new ids
when more clients are asked for than the sample has), the TFF model
(``emnist_conv_dropout``), batches of 20, everything through the public API:

* **FedAvg round** (``build_weighted_fed_avg(...).next``, aggregation included):
  ``--clients`` clients x ``--fedavg-epochs`` local epochs, client SGD 0.02, server SGD 1.0
  momentum 0.9, TFF's client pipeline; client-examples per second (examples processed over
  all local epochs / wall time). The issue's goal: the Table-1 load (20 clients x 5
  epochs) at >= 100,000 client-examples/s on one H200.
* **personalization evaluation** (``build_personalization_eval``): ``--p13n-clients``
  clients, baseline + SGD 0.02 and Adam 0.002 fine-tuning, ``--p13n-epochs`` epochs,
  evaluation after every epoch; clients per second. The goal: 900 clients in < 30 s.

Methods (``--methods``, comma list; default all that apply):

* ``cpu1``: per-client path in this process on the CPU, 1 thread (TFF's way);
* ``cpuN``: per-client path in ``--workers`` CPU processes (fedp13n's CPU default);
* ``dev1``: per-client path in this process on ``--device`` (data resident there);
* ``devN``: per-client path in N worker processes sharing the GPU
  (``make_executor(gpus=[i], workers_per_gpu=N)``), N from ``--gpu-workers``;
* ``engine``: the multi-client engine, K clients in lockstep on ``--device``, K from
  ``--k`` (on a GPU the largest K also with its dropout masks drawn inline instead of by
  threads a few steps ahead); with ``--cpu-engine`` also on the CPU (does it help there?).

CPU methods run on at most ``--cpu-clients`` of the clients (a rate does not depend on how
many clients are measured; the whole workload on the CPU would take many minutes).
Every method runs once to warm up, then ``--repeat`` times; the best run is the estimate,
the median is printed beside it. The GPU model, memory, CUDA/cuDNN/torch versions, the
CPU, and each in-process method's peak GPU memory are printed. ``--json FILE`` also writes
every measurement.

Run: ``python bench/bench_gpu.py --device cuda`` (on a GPU machine);
``python bench/bench_gpu.py --goal`` (the issue's two goal workloads);
``python bench/bench_gpu.py --quick`` (CPU smoke run of every method, seconds).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fedavg import SAMPLE, print_machine  # noqa: E402

from fedp13n.algorithms.fed_avg import ClientSelection, build_weighted_fed_avg  # noqa: E402
from fedp13n.data import ClientData  # noqa: E402
from fedp13n.data.datasets import load_dataset  # noqa: E402
from fedp13n.engine import MultiClientEngine  # noqa: E402
from fedp13n.execution.factory import make_executor  # noqa: E402
from fedp13n.execution.in_process import InProcessExecutor  # noqa: E402
from fedp13n.models import emnist_conv_dropout  # noqa: E402
from fedp13n.personalization import (  # noqa: E402
    build_personalization_eval,
    build_personalize_fn,
    evaluate_fn,
)
from fedp13n.utils.device import resolve_device, resolve_precision, set_deterministic  # noqa: E402

METHODS = ("cpu1", "cpuN", "dev1", "devN", "engine")


def print_device(device: torch.device) -> None:
    cuda = torch.version.cuda or "none (CPU-only torch)"
    print(f"  {'torch / CUDA':28s} {torch.__version__} / {cuda}")
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        print(f"  {'GPU':28s} {p.name}, {p.total_memory / 2**30:.0f} GiB, cc {p.major}.{p.minor}")
        print(f"  {'GPUs on the machine':28s} {torch.cuda.device_count()}")
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


def tiled(data: ClientData, n: int) -> tuple[ClientData, list[str]]:
    """``n`` clients: the sample's writers, repeated under new ids when n is larger."""
    ids = list(data.client_ids)
    if n <= len(ids):
        return data, ids[:n]
    clients = []
    for i in range(n):
        c = ids[i % len(ids)]
        d = data.create_dataset(c)
        clients.append((f"{c}#{i // len(ids)}", d.x, d.y))
    tiles = ClientData.from_clients(clients)
    return tiles, list(tiles.client_ids)


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
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    ap.add_argument("--precision", default="fp32", help="fp32, bf16, tf32 (device methods)")
    ap.add_argument("--clients", type=int, default=64, help="FedAvg round clients")
    ap.add_argument("--fedavg-epochs", type=int, default=1)
    ap.add_argument("--p13n-clients", type=int, default=64)
    ap.add_argument("--p13n-epochs", type=int, default=3)
    ap.add_argument("--k", default="8,16,32,64,128,256", help="engine K values (comma list)")
    ap.add_argument("--workers", type=int, default=2, help="CPU processes of cpuN")
    ap.add_argument("--gpu-workers", default="1,2,4,8", help="processes per GPU for devN")
    ap.add_argument("--cpu-clients", type=int, default=32, help="clients the CPU methods run")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--cpu-engine", action=argparse.BooleanOptionalAction, default=False)
    ap.add_argument(
        "--deterministic", action=argparse.BooleanOptionalAction, default=True,
        help="deterministic GPU kernels (fedp13n's default)",
    )  # fmt: skip
    ap.add_argument("--goal", action="store_true", help="the issue's goal workloads")
    ap.add_argument("--quick", action="store_true", help="CPU smoke sizes (seconds)")
    ap.add_argument("--json", help="also write the measurements to this file")
    args = ap.parse_args(argv)
    if args.goal:  # Table 1's FedAvg load; 900 personalization clients
        args.clients, args.fedavg_epochs, args.p13n_clients = 20, 5, 900
    if args.quick:
        args.clients, args.p13n_clients, args.p13n_epochs, args.repeat = 6, 6, 1, 1
        args.k, args.gpu_workers, args.cpu_clients = "4", "2", 6
    if not Path(args.data_dir).exists():
        sys.exit(f"no data at {args.data_dir}: pass --data-dir with the femnist_sample folder.")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := set(methods) - set(METHODS):
        sys.exit(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}.")
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device).name
    if device.type == "cuda":
        set_deterministic(args.deterministic)
    ks = [int(k) for k in args.k.split(",")]
    gpu_workers = [int(n) for n in args.gpu_workers.split(",")]
    torch.set_num_threads(1)  # per-client paths: 1 thread per process, as the executors do

    print("Machine")
    print_machine()
    print_device(device)
    train, test = load_dataset("emnist", data_dir=args.data_dir, progress=False)
    fed_data, fed_ids = tiled(train, args.clients)
    p13n_train, p13n_ids = tiled(train, args.p13n_clients)
    p13n_test, _ = tiled(test, args.p13n_clients)
    inputs = [
        {"client_id": c, "train_data": p13n_train.create_dataset(c),
         "test_data": p13n_test.create_dataset(c)}
        for c in p13n_ids
    ]  # fmt: skip
    strats = strategies(args.p13n_epochs)
    torch.manual_seed(0)
    weights = {k: v.detach().clone() for k, v in emnist_conv_dropout().state_dict().items()}

    def workload(n_fed: int, n_p13n: int) -> tuple[ClientSelection, list, int]:
        sel = ClientSelection(fed_data, fed_ids[:n_fed])
        examples = sum(fed_data.size(c) for c in fed_ids[:n_fed]) * args.fedavg_epochs
        return sel, inputs[:n_p13n], examples

    print(
        f"\nFedAvg round: {args.clients} clients x {args.fedavg_epochs} epochs; "
        f"personalization: {args.p13n_clients} clients, 2 strategies x {args.p13n_epochs} "
        f"epochs + baseline; device {device}, {precision}, "
        f"{'deterministic' if args.deterministic else 'nondeterministic'} kernels; CPU "
        f"methods on {min(args.cpu_clients, args.clients)} / "
        f"{min(args.cpu_clients, args.p13n_clients)} clients"
    )

    # name -> (fedavg fn, p13n fn, FedAvg client-examples, p13n clients, device, executor)
    runs: dict[str, tuple] = {}
    executors = []

    def add(name, executor, dev_name, engine=None, cpu=False, sync=None):
        """A method: its FedAvg round and personalization on ``dev_name`` (the per-client
        path's device) or on ``engine``; ``sync``: the device to wait for when timing."""
        n_fed = min(args.cpu_clients, args.clients) if cpu else args.clients
        n_p13n = min(args.cpu_clients, args.p13n_clients) if cpu else args.p13n_clients
        sel, p_inputs, examples = workload(n_fed, n_p13n)
        # beside an engine, the per-client path follows the engine's device and precision
        where = (
            dict(device=None, precision=None) if engine is not None
            else dict(device=dev_name, precision=precision if dev_name != "cpu" else "fp32")
        )  # fmt: skip
        fed = build_weighted_fed_avg(
            emnist_conv_dropout, client_epochs=args.fedavg_epochs, batch_size=20, seed=0,
            client_pipeline="tff", executor=executor, engine=engine,
            deterministic=args.deterministic, **where,
        )  # fmt: skip
        state = fed.initialize()
        ev = build_personalization_eval(
            emnist_conv_dropout, strats, evaluate_fn, len(p_inputs), seed=0,
            executor=executor, engine=engine, deterministic=args.deterministic, **where,
        )  # fmt: skip
        runs[name] = (
            functools.partial(fed.next, state, sel),
            functools.partial(ev, weights, p_inputs),
            examples,
            len(p_inputs),
            sync or resolve_device(dev_name),
            executor,
        )

    on_gpu = device.type != "cpu"
    gpu_index = [device.index or 0] if device.type == "cuda" else None
    if "cpu1" in methods:
        add("per-client, CPU, 1 process", InProcessExecutor(1), "cpu", cpu=True)
    if "cpuN" in methods:
        ex = make_executor("processes", num_workers=args.workers)
        executors.append(ex)
        add(f"per-client, CPU, {args.workers} processes", ex, "cpu", cpu=True)
    if "dev1" in methods and on_gpu:
        add(f"per-client, {device}, 1 process", InProcessExecutor(1), str(device))
    if "devN" in methods and device.type == "cuda":
        for n in gpu_workers:
            ex = make_executor("processes", gpus=gpu_index, workers_per_gpu=n)
            executors.append(ex)
            add(f"per-client, {device}, {n} processes", ex, str(device))
    if "engine" in methods:
        devs = [device] + ([torch.device("cpu")] if args.cpu_engine and on_gpu else [])
        for d in devs:
            prec = precision if d == device else "fp32"
            for k in ks:
                # on a GPU, the largest K also with the masks drawn inline (no threads)
                for threads in [None] + ([0] if d.type == "cuda" and k == max(ks) else []):
                    eng = MultiClientEngine(
                        emnist_conv_dropout, device=d, precision=resolve_precision(prec, d),
                        max_clients=k, mask_threads=threads,
                    )  # fmt: skip
                    label = f"engine K={k}, {d.type} {prec}" + (
                        ", inline masks" if threads == 0 else ""
                    )
                    add(label, InProcessExecutor(1), str(d), eng, sync=d)

    seconds: dict[str, list[list[float]]] = {m: [[], []] for m in runs}
    memory: dict[str, float] = {}
    try:
        for name, (fed_fn, p13n_fn, *_) in runs.items():  # warm-up
            print(f"  warm-up {name}", flush=True)
            fed_fn()
            p13n_fn()
        for r in range(args.repeat):
            for name, (fed_fn, p13n_fn, _, _, dev, _) in runs.items():
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                seconds[name][0].append(timed(fed_fn, dev))
                seconds[name][1].append(timed(p13n_fn, dev))
                if dev.type == "cuda":
                    memory[name] = torch.cuda.max_memory_allocated(dev) / 2**20
                fed_s, p13n_s = seconds[name][0][-1], seconds[name][1][-1]
                print(  # the rates as they come: a run stopped by a time limit keeps them
                    f"    rep {r + 1}/{args.repeat} {name:36s} fedavg {fed_s:7.2f} s "
                    f"({runs[name][2] / fed_s:8.0f} ex/s)   p13n {p13n_s:7.2f} s "
                    f"({runs[name][3] / p13n_s:6.2f} clients/s)",
                    flush=True,
                )
    finally:
        for ex in executors:
            ex.close()

    print(f"\nResults (best of {args.repeat}; median in brackets)")
    print(
        f"  {'method':36s} {'FedAvg client-ex/s':>20s} {'p13n clients/s':>18s} "
        f"{'GPU MiB':>8s} {'p13n goal s':>11s}"
    )
    base = None
    rows = []
    for name, (fed_s, p13n_s) in seconds.items():
        examples, clients = runs[name][2], runs[name][3]
        fed_best, p_best = examples / min(fed_s), clients / min(p13n_s)
        fed_med, p_med = examples / statistics.median(fed_s), clients / statistics.median(p13n_s)
        base = base or (fed_best, p_best)
        mem = f"{memory[name]:8.0f}" if name in memory else f"{'-':>8s}"
        rows.append(dict(method=name, fedavg_examples_per_s=fed_best, p13n_clients_per_s=p_best,
                         fedavg_seconds=fed_s, p13n_seconds=p13n_s, gpu_mib=memory.get(name),
                         fedavg_examples=examples, p13n_clients=clients))  # fmt: skip
        print(
            f"  {name:36s} {fed_best:9.0f} ({fed_med:8.0f}) {p_best:8.2f} ({p_med:7.2f}) {mem}"
            f" {900 / p_best:11.1f}   x{fed_best / base[0]:.2f} / x{p_best / base[1]:.2f}"
        )
    print("  (x: ratio to the first method, FedAvg / personalization; p13n goal s: 900 clients")
    print("   at that rate; goals on one H200: >= 100,000 client-ex/s, 900 clients < 30 s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": rows}, indent=1))


if __name__ == "__main__":
    main()
