"""Benchmark: local-training speed of one FedAvg round on real federated EMNIST writers.

The issue's setting: 10 clients, 10 local epochs, batches of 20, the conv-dropout model
(``emnist_conv_dropout``), client SGD lr 0.02, real writers from
``../shared/data/femnist_sample``. Reported as client-examples per second (examples
processed over all local epochs / wall time of the round), beside:

* bare PyTorch loops doing the same work with no framework (per-client copy of the global
  model, SGD 0.02, a shuffled order per epoch, dropout; data converted to float once):
  with the plain reference model (Keras layer order, ``nn.Dropout``, NCHW), with fedp13n's
  model, with 1 and with all torch threads, and split over 2 processes of 1 thread;
* ``build_weighted_fed_avg`` with the in-process executor (1 thread: must lose at most 5%
  to the bare 1-thread loop with the same model) and with 2 worker processes of 1 thread
  (the headline number; TFF 0.87 ran this round at ~2,190 ex/s on the issue's machines);
* the machine's fp32 peak, measured with a large sgemm in torch, and the model's
  72.0 MFLOP per training example (forward multiply-adds x 2 x 3 for forward + backward).

Methods are interleaved within each repetition so that a change of machine load hits all
of them alike; the best repetition is the estimate (least disturbed by other processes),
the median is printed too. Everything runs after a one-epoch warm-up round.

Run: ``python bench/bench_fedavg.py`` (the issue's setting, a few minutes on 2 cores) or
``python bench/bench_fedavg.py --clients 2 --epochs 1 --repeat 1`` (smoke run, seconds).
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import fedp13n
from fedp13n.algorithms.fed_avg import ClientSelection, build_weighted_fed_avg, sample_clients
from fedp13n.data.client_data import UINT8_TO_UNIT
from fedp13n.data.datasets import load_dataset
from fedp13n.execution.in_process import InProcessExecutor
from fedp13n.models import emnist_conv_dropout
from fedp13n.models.layers import FastDropout

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared/data/femnist_sample"
TFF_EXAMPLES_PER_S = 2190.0  # TFF 0.87 on the machines (AMD EPYC, 2 cores, AVX-512)
GOAL_EXAMPLES_PER_S = 1.2 * TFF_EXAMPLES_PER_S
LR = 0.02


# -- machine ----------------------------------------------------------------------------------
def machine_info() -> dict[str, str]:
    """CPU model, cores, SIMD level, load and versions: numbers mean nothing without them."""
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return {
        "cpu": cpu,
        "usable cores": str(cores),
        "torch cpu capability": torch.backends.cpu.get_cpu_capability(),
        "load average (1, 5, 15 min)": load,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "fedp13n": getattr(fedp13n, "__version__", "?"),
    }


def print_machine() -> None:
    for k, v in machine_info().items():
        print(f"  {k:28s} {v}")


def measure_sgemm_gflops(threads: int, n: int = 2048, seconds: float = 1.0) -> float:
    """fp32 GFLOP/s of an n x n x n matrix product (2 n^3 flops) with ``threads`` threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        c = torch.empty(n, n)
        torch.mm(a, b, out=c)  # warm-up
        best = float("inf")
        deadline = time.perf_counter() + seconds
        while True:
            t = time.perf_counter()
            torch.mm(a, b, out=c)
            best = min(best, time.perf_counter() - t)
            if time.perf_counter() > deadline:
                break
        return 2 * n**3 / best / 1e9
    finally:
        torch.set_num_threads(old)


def training_flops_per_example(model: nn.Module, image_shape=(28, 28)) -> float:
    """3 x 2 x forward multiply-adds of convolutions and dense layers (backward ~ 2 x forward)."""
    macs = 0

    def hook(module: nn.Module, inputs, output) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            macs += output[0].numel() * module.in_channels // module.groups * k
        elif isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *image_shape))
    finally:
        for h in handles:
            h.remove()
    return 6.0 * macs


# -- the bare loop ---------------------------------------------------------------------------
class ReferenceConvDropout(nn.Module):
    """TFF's conv-dropout model written the plain way (Keras layer order, NCHW, nn.Dropout)."""

    def __init__(self, num_classes: int = 62) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.dropout1 = nn.Dropout(0.25)
        self.fc1 = nn.Linear(9216, 128)
        self.dropout2 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x.unsqueeze(1)))
        x = self.dropout1(F.max_pool2d(F.relu(self.conv2(x)), 2))
        x = self.dropout2(F.relu(self.fc1(torch.flatten(x, 1))))
        return self.fc2(x)


class AblationConvDropout(ReferenceConvDropout):
    """The reference model with each of fedp13n's speed changes switchable (for --ablation)."""

    def __init__(self, pool_first: bool, fast_dropout: bool, channels_last: bool) -> None:
        super().__init__()
        self.pool_first, self.channels_last = pool_first, channels_last
        if fast_dropout:
            self.dropout1, self.dropout2 = FastDropout(0.25), FastDropout(0.5)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = F.relu(self.conv1(x))
        x = self.conv2(x)
        x = F.relu(F.max_pool2d(x, 2)) if self.pool_first else F.max_pool2d(F.relu(x), 2)
        x = self.dropout1(x.contiguous())
        x = self.dropout2(F.relu(self.fc1(torch.flatten(x, 1))))
        return self.fc2(x)


ABLATION = {
    "reference (Keras order, nn.Dropout, NCHW)": (False, False, False),
    "+ max-pool before ReLU": (True, False, False),
    "+ FastDropout": (True, True, False),
    "+ channels-last (= fedp13n's model)": (True, True, True),
    "channels-last only": (False, False, True),
    "FastDropout only": (False, True, False),
}


def _sgd_stepper(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One SGD training step of ``model`` on a fixed batch (for per-step timings)."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def ablation(steps: int, batch: int, repeat: int) -> None:
    """ms per training step (1 thread) of the reference model with each change added."""
    torch.set_num_threads(1)
    x, y = torch.rand(batch, 28, 28), torch.randint(0, 62, (batch,))
    steppers = {}
    for name, flags in ABLATION.items():
        torch.manual_seed(0)
        step = _sgd_stepper(AblationConvDropout(*flags).train(), x, y)
        for _ in range(10):
            step()
        steppers[name] = step
    times: dict[str, list[float]] = {k: [] for k in steppers}
    for _ in range(repeat):
        for name, step in steppers.items():
            t = time.perf_counter()
            for _ in range(steps):
                step()
            times[name].append((time.perf_counter() - t) / steps * 1e3)
    ref = min(times[next(iter(times))])
    print(f"\nAblation: batch {batch}, 1 thread, best of {repeat} x {steps} steps (interleaved)")
    for name, v in times.items():
        print(
            f"  {name:44s} {min(v):7.2f} ms/step (median {statistics.median(v):6.2f})  "
            f"{batch / min(v) * 1e3:5.0f} ex/s  x{ref / min(v):.2f}"
        )


MODEL_FNS: dict[str, Callable[[], nn.Module]] = {
    "reference": ReferenceConvDropout,
    "fedp13n": emnist_conv_dropout,
}


def bare_client(
    model_name: str, weights: dict[str, torch.Tensor], x: np.ndarray, y: np.ndarray, args
) -> tuple[int, dict[str, torch.Tensor]]:
    """One client's local training, plain PyTorch: returns (examples processed, delta)."""
    torch.manual_seed(args[2])
    model = MODEL_FNS[model_name]()
    model.load_state_dict(weights)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    xt = torch.from_numpy(UINT8_TO_UNIT[x])  # float once, not per batch
    yt = torch.from_numpy(y.astype(np.int64))
    rng = np.random.default_rng(args[2])
    epochs, batch = args[0], args[1]
    n = 0
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(yt)))
        for s in range(0, len(yt), batch):
            idx = order[s : s + batch]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            n += len(idx)
    with torch.no_grad():
        delta = {k: weights[k] - v for k, v in model.state_dict().items()}
    return n, delta


def _bare_task(task):
    return bare_client(*task)


def _init_worker() -> None:
    torch.set_num_threads(1)


def bare_round(clients, weights, model_name: str, epochs: int, batch: int, pool=None) -> int:
    """A bare FedAvg round: local training of every client, then the weighted average."""
    tasks = [
        (model_name, weights, x, y, (epochs, batch, 1000 + i)) for i, (x, y) in enumerate(clients)
    ]
    results = pool.map(_bare_task, tasks, chunksize=1) if pool else [_bare_task(t) for t in tasks]
    sizes = [len(y) for _, y in clients]
    total = sum(sizes)
    avg = {
        k: sum(d[k] * (s / total) for (_, d), s in zip(results, sizes, strict=True))
        for k in weights
    }
    assert len(avg) == len(weights)
    return sum(n for n, _ in results)


# -- Keras on the same machine ---------------------------------------------------------------
#: Runs in another Python that has TensorFlow (``--keras-python``): TFF's model in Keras, one
#: ``fit`` per client from the same global weights; the issue measured TFF's round at Keras
#: ``fit`` speed, so this stands in for TFF on the machine the benchmark runs on.
_KERAS_SCRIPT = r"""
import json, sys, time
import numpy as np
import tensorflow as tf
import keras
data = np.load(sys.argv[1])
epochs, batch, repeat = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
clients = [(data[f"x{i}"], data[f"y{i}"]) for i in range(int(data["n"]))]
def create_conv_dropout_model(num_classes=62):
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.Conv2D(64, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Dropout(0.25),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(num_classes),
    ])
model = create_conv_dropout_model()
model.compile(keras.optimizers.SGD(0.02),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True))
initial = model.get_weights()
def round_():
    n = 0
    for x, y in clients:
        model.set_weights(initial)
        model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=True, verbose=0)
        n += len(y) * epochs
    return n
round_()
rates = []
for _ in range(repeat):
    t = time.perf_counter(); n = round_(); rates.append(n / (time.perf_counter() - t))
print(json.dumps({"rates": rates, "tf": tf.__version__, "keras": keras.__version__,
                  "threads": tf.config.threading.get_intra_op_parallelism_threads()}))
"""


def keras_rates(python: str, clients, epochs: int, batch: int, repeat: int) -> dict | None:
    """Examples/s of Keras ``fit`` on the same clients, in ``python`` (None if it fails)."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        arrays = {"n": np.array(len(clients))}
        for i, (x, y) in enumerate(clients):
            arrays[f"x{i}"] = UINT8_TO_UNIT[x][..., None]
            arrays[f"y{i}"] = y.astype(np.int32)
        np.savez(Path(tmp) / "clients.npz", **arrays)
        script = Path(tmp) / "keras_round.py"
        script.write_text(_KERAS_SCRIPT)
        cmd = [python, str(script), str(Path(tmp) / "clients.npz"), str(epochs), str(batch)]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        proc = subprocess.run([*cmd, str(repeat)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"  Keras run failed ({python}):\n{proc.stderr[-2000:]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- profile --------------------------------------------------------------------------------
def profile_step(steps: int, batch: int) -> None:
    """Where one training step's time goes (1 thread), per model: torch.profiler tables."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    x, y = torch.rand(batch, 28, 28), torch.randint(0, 62, (batch,))
    for name, model_fn in MODEL_FNS.items():
        torch.manual_seed(0)
        model = model_fn().train()
        step = _sgd_stepper(model, x, y)
        for _ in range(20):
            step()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        ms = (time.perf_counter() - t) / steps * 1e3
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(steps):
                step()
        print(f"\n{name} model: {ms:.2f} ms per step of {batch} ({batch / ms * 1e3:.0f} ex/s)")
        print(
            prof.key_averages(group_by_input_shape=True).table(
                sort_by="self_cpu_time_total",
                row_limit=15,
                max_name_column_width=36,
                max_shapes_column_width=44,
            )
        )


# -- timing -----------------------------------------------------------------------------------
def with_threads(threads: int, fn: Callable[[], int]) -> Callable[[], int]:
    def run() -> int:
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return fn()
        finally:
            torch.set_num_threads(old)

    return run


def time_methods(methods: dict[str, Callable[[], int]], repeat: int) -> dict[str, list[float]]:
    """examples/s of each method per repetition, methods interleaved."""
    rates: dict[str, list[float]] = {k: [] for k in methods}
    for r in range(repeat):
        for name, fn in methods.items():
            t = time.perf_counter()
            n = fn()
            rates[name].append(n / (time.perf_counter() - t))
            print(f"    rep {r + 1}/{repeat} {name:44s} {rates[name][-1]:8.0f} ex/s", flush=True)
    return rates


def make_process_executor(workers: int):
    try:
        from fedp13n.execution.factory import make_executor

        return make_executor("processes", num_workers=workers, threads_per_worker=1)
    except ImportError:
        from fedp13n.execution.process_pool import LocalProcessExecutor

        return LocalProcessExecutor(num_workers=workers)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        help="time only the methods whose name contains this text (repeatable), e.g. "
        "--only '1 thread' for the in-process vs bare-loop comparison",
    )
    ap.add_argument("--workers", type=int, default=2, help="processes for the multi-core runs")
    ap.add_argument("--data-dir", default=str(SAMPLE))
    ap.add_argument(
        "--keras-python",
        metavar="PYTHON",
        help="a Python with TensorFlow: also time Keras fit on the same clients",
    )
    ap.add_argument(
        "--profile", type=int, metavar="STEPS", help="profile STEPS training steps and exit"
    )
    ap.add_argument(
        "--ablation", type=int, metavar="STEPS", help="time each model change (STEPS per rep)"
    )
    args = ap.parse_args(argv)
    if args.ablation:
        print_machine()
        ablation(args.ablation, args.batch_size, args.repeat)
        return
    if args.profile:
        print_machine()
        profile_step(args.profile, args.batch_size)
        return
    if not Path(args.data_dir).exists():
        sys.exit(f"no data at {args.data_dir}: pass --data-dir with the femnist_sample folder.")

    print("Machine")
    print_machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    flops = training_flops_per_example(emnist_conv_dropout())
    print(f"  training cost per example     {flops / 1e6:.1f} MFLOP")
    peak1 = measure_sgemm_gflops(1)
    peak_all = measure_sgemm_gflops(cores)
    print(f"  sgemm 2048^3 fp32, 1 thread   {peak1:.0f} GFLOP/s")
    print(f"  sgemm 2048^3 fp32, {cores} threads  {peak_all:.0f} GFLOP/s")

    train, _ = load_dataset("emnist", data_dir=args.data_dir, progress=False)
    ids = sample_clients(train.client_ids, args.clients, seed=0, round_num=1)
    sel = train.subset(ids)
    clients = [(sel.create_dataset(c).x, sel.create_dataset(c).y) for c in ids]
    per_round = sum(len(y) for _, y in clients) * args.epochs
    print(
        f"\nOne round: {len(ids)} clients ({per_round // args.epochs} examples), "
        f"{args.epochs} epochs, batch {args.batch_size} = {per_round} client-examples"
    )

    executor = make_process_executor(args.workers)
    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(args.workers, initializer=_init_worker)
    state = build_weighted_fed_avg(emnist_conv_dropout, seed=0).initialize()

    def build_methods(epochs: int) -> dict[str, Callable[[], int]]:
        common = dict(client_epochs=epochs, batch_size=args.batch_size, seed=0)
        in_proc = build_weighted_fed_avg(
            emnist_conv_dropout, executor=InProcessExecutor(1), **common
        )
        multi = build_weighted_fed_avg(emnist_conv_dropout, executor=executor, **common)
        weights = in_proc.get_model_weights(state)

        def fedp13n_round(process) -> int:
            _, metrics = process.next(state, ClientSelection(sel, ids))
            return metrics.num_examples

        bare = functools.partial(bare_round, clients, weights, epochs=epochs, batch=args.batch_size)
        return {
            "bare loop, reference model, 1 thread": with_threads(
                1, lambda: bare(model_name="reference")
            ),
            "bare loop, fedp13n model, 1 thread": with_threads(
                1, lambda: bare(model_name="fedp13n")
            ),
            "fedp13n InProcessExecutor, 1 thread": with_threads(1, lambda: fedp13n_round(in_proc)),
            f"bare loop, fedp13n model, {cores} threads": with_threads(
                cores, lambda: bare(model_name="fedp13n")
            ),
            f"bare loop, reference model, {args.workers} procs x 1": lambda: bare(
                model_name="reference", pool=pool
            ),
            f"bare loop, fedp13n model, {args.workers} procs x 1": lambda: bare(
                model_name="fedp13n", pool=pool
            ),
            f"fedp13n {args.workers} worker processes x 1 thread": lambda: fedp13n_round(multi),
        }

    print(f"\nTiming ({args.repeat} repetitions, methods interleaved, after a 1-epoch warm-up)")
    try:
        for fn in build_methods(1).values():  # warm-up: processes, caches, oneDNN kernels
            fn()
        methods = build_methods(args.epochs)
        if args.only:
            methods = {k: v for k, v in methods.items() if any(o in k for o in args.only)}
        rates = time_methods(methods, args.repeat)
    finally:
        pool.close()
        pool.join()
        executor.close()

    if args.keras_python:
        keras = keras_rates(args.keras_python, clients, args.epochs, args.batch_size, args.repeat)
        if keras:
            name = f"Keras {keras['keras']} fit (TF {keras['tf']}), {cores} threads"
            rates[name] = keras["rates"]
            print(f"    {name:52s} {max(keras['rates']):8.0f} ex/s (best)")

    print(f"\nResults (best of {args.repeat}; median in brackets; load {os.getloadavg()[0]:.2f})")
    print(f"  {'method':50s} {'ex/s':>8s} {'median':>8s} {'GFLOP/s':>8s} {'% peak':>7s}")
    best = {k: max(v) for k, v in rates.items()}
    for name, v in rates.items():
        # % of the sgemm peak for the cores the method uses: 1 thread, else all of them
        peak = peak1 if name.endswith(", 1 thread") else peak_all
        g = best[name] * flops / 1e9
        print(
            f"  {name:50s} {best[name]:8.0f} ({statistics.median(v):6.0f}) {g:8.1f} "
            f"{100 * g / peak:6.1f}%"
        )
    if args.only:  # a subset of the methods: the ratios below need all of them
        names = [k for k in best if "1 thread" in k]
        if len(names) >= 3:
            bare1, inproc1 = best[names[1]], best[names[2]]
            med = {k: statistics.median(v) for k, v in rates.items()}
            print(
                f"\n  in-process / bare loop (1 thread, same model): best x{inproc1 / bare1:.3f}, "
                f"median x{med[names[2]] / med[names[1]]:.3f} (goal >= x0.95)"
            )
        return
    (ref1, bare1, inproc1, _, _, bare_multi, multi_rate) = list(best.values())[:7]
    print(
        f"\n  in-process executor / bare loop (1 thread, same model): x{inproc1 / bare1:.3f} "
        f"(goal >= x0.95: at most 5% lost to the framework)"
    )
    print(f"  fedp13n model vs reference model (bare, 1 thread): x{bare1 / ref1:.2f}")
    print(f"  {args.workers} processes vs 1 thread (fedp13n): x{multi_rate / inproc1:.2f}")
    print(
        f"  hardware limit at the sgemm peak: {peak_all * 1e9 / flops:.0f} ex/s on {cores} "
        f"cores; the headline reaches {100 * multi_rate * flops / 1e9 / peak_all:.0f}% of it"
    )
    print(
        f"  headline: {multi_rate:.0f} ex/s = x{multi_rate / TFF_EXAMPLES_PER_S:.2f} "
        f"TFF's {TFF_EXAMPLES_PER_S:.0f} ex/s measured on the issue's machines (goal >= "
        f"{GOAL_EXAMPLES_PER_S:.0f}); / the bare {args.workers}-process loop: "
        f"x{multi_rate / bare_multi:.3f}"
    )
    if len(best) > 7:
        keras_rate = list(best.values())[7]
        print(
            f"  vs Keras fit on this machine ({keras_rate:.0f} ex/s, TFF's speed per the issue): "
            f"x{multi_rate / keras_rate:.2f} (goal >= x1.20)"
        )


if __name__ == "__main__":
    main()
