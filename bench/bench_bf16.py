"""bf16 autocast against fp32 on the same CPU, in one run: a training step, then a short
real-sample experiment in both precisions with the same seed.

    python bench/bench_bf16.py [--rounds 20] [--data-dir ../shared/data/femnist_sample]

Prints the CPU and whether it has native bf16 (AVX512-BF16 / AMX), the time of one
training step of TFF's EMNIST CNN (1 thread, batch 20) in each precision, then, per
precision, the FedAvg and personalization wall time and the global and personalized
accuracies with their 95% bootstrap confidence intervals (figures: bench/README.md).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fedp13n.experiments.config import ExperimentConfig, StrategyConfig
from fedp13n.experiments.p13n_experiment import run_experiment
from fedp13n.models import emnist_conv_dropout
from fedp13n.utils.device import cpu_has_native_bf16, resolve_precision

ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def step_ms(precision: str, steps: int = 30) -> list[float]:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = emnist_conv_dropout(62)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    x, y = torch.rand(20, 28, 28), torch.randint(0, 62, (20,))
    ctx = resolve_precision(precision, "cpu")
    times = []
    for i in range(steps + 5):
        t0 = time.perf_counter()
        with ctx:
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 5:
            times.append(1000 * (time.perf_counter() - t0))
    return times


def experiment(precision: str, args, out: Path) -> dict:
    config = ExperimentConfig(
        dataset="emnist", data_dir=str(args.data_dir), num_train_clients=220,
        num_p13n_clients=66, rounds=args.rounds, clients_per_round=20, local_epochs=5,
        num_global_eval_clients=220, num_eval_clients=66, precision=precision,
        strategies=[StrategyConfig("sgd", "sgd", 0.02), StrategyConfig("adam", "adam", 0.002)],
    )  # fmt: skip
    t0 = time.perf_counter()
    times = {}

    def log(line: str) -> None:
        if line.startswith("personalization:"):
            times["fedavg"] = time.perf_counter() - t0
        if line.startswith("personalization took"):
            times["p13n"] = float(line.split()[2])

    result = run_experiment(config, out / precision, progress=False, log=log)
    times["total"] = time.perf_counter() - t0
    return {"times": times, "summary": result.summary, "rows": result.round_metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/femnist_sample")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}; native bf16: {cpu_has_native_bf16()}; torch {torch.__version__}")
    for precision in ("fp32", "bf16", "fp32", "bf16"):  # interleaved, second pair reported
        t = step_ms(precision)
    fp32, bf16 = step_ms("fp32"), step_ms("bf16")
    a, b = statistics.median(fp32), statistics.median(bf16)
    print(f"training step, 1 thread, batch 20: fp32 {a:.1f} ms, bf16 {b:.1f} ms (x{a / b:.2f})")
    del t
    with tempfile.TemporaryDirectory() as d:
        runs = {p: experiment(p, args, Path(d)) for p in ("fp32", "bf16")}
    for p, r in runs.items():
        s, t = r["summary"], r["times"]
        final = r["rows"][-1]
        print(
            f"{p}: FedAvg {t['fedavg']:.0f} s, personalization {t['p13n']:.0f} s, "
            f"total {t['total']:.0f} s"
        )
        print(f"  global model, training writers' test data: {float(final['eval_accuracy']):.4f}")
        b = s.baseline
        print(f"  baseline {b.mean:.4f} [{b.ci_low:.4f}, {b.ci_high:.4f}]")
        for row in s.rows:
            print(
                f"  {row.strategy} {row.epoch}: {row.mean:.4f} "
                f"[{row.ci_low:.4f}, {row.ci_high:.4f}] "
                f"helped {row.improved:.0%} hurt {row.hurt:.0%}"
            )
    ratio = runs["fp32"]["times"]["total"] / runs["bf16"]["times"]["total"]
    fed = runs["fp32"]["times"]["fedavg"] / runs["bf16"]["times"]["fedavg"]
    print(f"wall time fp32 / bf16: FedAvg x{fed:.2f}, whole run x{ratio:.2f}")


if __name__ == "__main__":
    main()
