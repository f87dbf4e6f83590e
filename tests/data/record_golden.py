"""Record the numbers of a small fixed-seed ``fedp13n run --dataset synthetic``.

``tests/test_golden_run.py`` compares every later version against the values this
script wrote, so a change of the training, the personalization or the files beyond float
rounding fails the test. Rerun it only for a deliberate change of the numbers, and say so
in the commit:

    .venv/bin/python tests/data/record_golden.py --client-pipeline epochs \
        > tests/data/golden_synthetic_avx2.json

Bits depend on the machine: torch picks its vectorised CPU kernels by the CPU's capability
(``torch.backends.cpu.get_cpu_capability()``: AVX2, AVX512, ...) and vendor, and float sums
come out differently rounded (an Intel and an AMD AVX-512 CPU differ at 1e-8). So the test
compares a run with the recording within float tolerance on every CPU, never bit for bit.
``golden_synthetic_avx2.json`` was made on an AVX2 CPU (an AMD EPYC) on the code of issue
18, once a strategy's dropout and shuffle are seeded after its fresh model holds the global
weights (the personalization numbers moved then; FedAvg and the weights did not). It
records its capability, the CPU's name, the whole ``per_client.csv`` and per-tensor sums
of the weights. (An older recording made on an AVX-512 AMD Zen 4, before the refactor of
issue 9, was deleted then: no such CPU was at hand to re-record it.)
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import tempfile
from pathlib import Path

#: The run: small enough for a unit test (a few seconds in-process), every stage exercised.
ARGS = [
    "run",
    "--dataset", "synthetic",
    "--synthetic-clients", "16",
    "--num-train-clients", "10",
    "--num-p13n-clients", "6",
    "--rounds", "3",
    "--clients-per-round", "3",
    "--local-epochs", "1",
    "--eval-every", "2",
    "--num-eval-clients", "4",
    "--p13n-epochs", "2",
    "--executor", "in-process",
    "--no-report",
    "--no-progress",
]  # fmt: skip

#: Columns of fedavg_metrics.csv that do not depend on the machine's speed.
FEDAVG_KEYS = (
    "round",
    "loss",
    "accuracy",
    "num_examples",
    "num_clients",
    "num_skipped_clients",
    "eval_loss",
    "eval_accuracy",
)


def weights_digest(path: Path) -> str:
    import torch

    weights = torch.load(path, weights_only=True)
    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def weights_sums(path: Path) -> dict[str, list[float]]:
    """Per tensor: the float64 sum and sum of absolute values (for tolerance checks)."""
    import torch

    weights = torch.load(path, weights_only=True)
    return {
        name: [float(t.double().sum()), float(t.double().abs().sum())]
        for name, t in sorted(weights.items())
    }


def cpu_capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def cpu_name() -> str:
    """The CPU's model name where the platform says it (for the record; never compared)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_values(run_dir: Path) -> dict:
    with (run_dir / "fedavg_metrics.csv").open(newline="") as f:
        fedavg = [{k: r[k] for k in FEDAVG_KEYS} for r in csv.DictReader(f)]
    per_client = (run_dir / "per_client.csv").read_text()
    return {
        "cpu_capability": cpu_capability(),
        "cpu_name": cpu_name(),
        "fedavg_metrics": fedavg,
        "per_client_sha256": hashlib.sha256(per_client.encode()).hexdigest(),
        "per_client_head": per_client.splitlines()[:3],
        "per_client_csv": per_client,
        "global_weights_sha256": weights_digest(run_dir / "global_weights.pt"),
        "global_weights_sums": weights_sums(run_dir / "global_weights.pt"),
    }


#: Settings that only a config file reached before the refactor.
CONFIG_TOML = "num_global_eval_clients = 5\n"


def run_golden(extra_args: list[str], run_dir: Path) -> dict:
    from typer.testing import CliRunner

    from fedp13n.cli.main import app

    run_dir.mkdir(parents=True)
    config = run_dir.parent / "golden.toml"
    config.write_text(CONFIG_TOML)
    args = [*ARGS, "--config", str(config), *extra_args, "--output-dir", str(run_dir)]
    res = CliRunner().invoke(app, args)
    if res.exit_code != 0:
        raise RuntimeError(f"golden run failed ({res.exit_code}): {res.output}")
    return run_values(run_dir)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        values = run_golden(sys.argv[1:], Path(d) / "run")
    json.dump({"args": ARGS, **values}, sys.stdout, indent=1)
    print()
