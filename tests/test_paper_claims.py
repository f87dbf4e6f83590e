"""bench/paper_claims.py: the three-claims table read from run folders.

The run folders are written here by hand in the layout ``fedp13n run`` writes
(``per_client.csv``, ``tuning.json``, ``fedavg_metrics.csv``), with per-client numbers
chosen so that every mean, gain and verdict can be checked by hand: where a claim's
per-client differences are all equal, every bootstrap resample has that mean, so the
interval is that one number; where they are all positive (negative), every resample mean
is too.
"""

from __future__ import annotations

import csv
import json
import sys
import tomllib
from pathlib import Path

import pytest

from fedp13n.experiments.config import ExperimentConfig
from fedp13n.rundir import layout as rd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import paper_claims as pc  # noqa: E402

CLIENTS = ("c1", "c2", "c3", "c4")


def write_run(
    path: Path,
    baseline: list[float],
    epochs: dict[str, list[float]],
    validation: dict[str, float] | None,
    num_examples: list[int] = (100, 200),
    clients=CLIENTS,
) -> str:
    """A finished run of one strategy ``sgd`` (``epochs``: epoch key -> per-client
    accuracy), tuned on 2 validation clients whose mean accuracy per epoch is
    ``validation`` (None: a run without validation clients)."""
    path.mkdir(parents=True)
    with (path / rd.PER_CLIENT).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(rd.PER_CLIENT_COLUMNS)
        for epoch, accs in epochs.items():
            for cid, acc, base in zip(clients, accs, baseline, strict=True):
                w.writerow([cid, 50, 10, "sgd", epoch, 1.0, acc, 2.0, base])
    if validation is not None:
        tuning = {
            "validation_client_ids": ["v1", "v2"],
            "strategies": {
                "sgd": {
                    "chosen": {"learning_rate": 0.02},
                    "chosen_epoch": max(validation, key=validation.get),
                    "validation_accuracy": max(validation.values()),
                }
            },
            "validation_accuracy": {"sgd": validation},
        }
        (path / rd.TUNING).write_text(json.dumps(tuning))
    with (path / rd.FEDAVG_METRICS).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["round", "loss", "accuracy", "num_examples"])
        for i, n in enumerate(num_examples, start=1):
            w.writerow([i, 1.0, 0.5, n])
    return str(path)


@pytest.fixture
def emnist_runs(tmp_path):
    """FedAvg gains 0.1 on every client (epoch 1, chosen on validation although epoch 2 is
    higher on the reported clients); the centralized model gains 0 on every client;
    Personalized FedAvg starts 0.1 lower on every client and ends 0.2, 0.2, 0.2, 0.1 higher
    than FedAvg."""
    fed = write_run(
        tmp_path / "fed",
        [0.5, 0.6, 0.7, 0.8],
        {"epoch_1": [0.6, 0.7, 0.8, 0.9], "epoch_2": [0.9, 0.9, 0.9, 0.9]},
        {"epoch_1": 0.8, "epoch_2": 0.3},
        num_examples=[1000, 2000],
    )
    cen = write_run(
        tmp_path / "cen",
        [0.7, 0.8, 0.9, 1.0],
        {"epoch_1": [0.7, 0.8, 0.9, 1.0]},
        {"epoch_1": 0.5},
        num_examples=[3000],
    )
    pfed = write_run(
        tmp_path / "pfed",
        [0.4, 0.5, 0.6, 0.7],
        {"epoch_1": [0.8, 0.9, 1.0, 1.0]},
        {"epoch_1": 0.9},
    )
    return fed, cen, pfed


def test_verdict_reads_the_interval_against_zero():
    assert pc.verdict(pc.Interval(0.1, 0.01, 0.2)) == "supported"
    assert pc.verdict(pc.Interval(-0.1, -0.2, -0.01)) == "not supported"
    assert pc.verdict(pc.Interval(0.01, -0.01, 0.03)) == "inconclusive (the 95% CI contains 0)"
    assert pc.verdict(pc.Interval(0.0, 0.0, 0.0)) == "inconclusive (the 95% CI contains 0)"
    assert pc.verdict(pc.Interval(float("nan"), 0.1, 0.2)).startswith("inconclusive")


def test_a_run_reports_the_validation_chosen_strategy(emnist_runs):
    fed = pc.read_run("fedavg", emnist_runs[0])
    assert fed.client_ids == CLIENTS
    assert fed.initial.mean == pytest.approx(0.65)
    # epoch 1 (validation 0.8), not epoch 2 (0.9 on the reported clients, validation 0.3)
    assert fed.choice == "sgd (learning_rate 0.02), epoch 1"
    assert fed.held_out and fed.num_validation == 2
    assert fed.personalized.mean == pytest.approx(0.75)
    assert (fed.gain.mean, fed.gain.low, fed.gain.high) == pytest.approx((0.1, 0.1, 0.1))
    assert (fed.helped, fed.hurt) == (1.0, 0.0)
    assert fed.example_steps == 3000  # 1000 + 2000
    assert fed.initial.low < 0.65 < fed.initial.high


def test_the_three_claims_by_hand(emnist_runs):
    runs = {role: pc.read_run(role, p) for role, p in zip(pc.ROLES, emnist_runs, strict=True)}
    (m1, v1), (m2, v2), (m3, v3) = pc.claims("emnist", runs)
    # 1: gain 0.1 on every client
    assert v1 == "supported" and m1 == "gain +0.100 [+0.100, +0.100]"
    # 2: differences 0.2, 0.2, 0.2, 0.1 (mean 0.175, all > 0); initial -0.1 on every client
    assert v2 == "supported"
    assert m2.startswith("personalized, Personalized FedAvg - FedAvg +0.175 [+0.1")
    assert m2.endswith("(initial -0.100 [-0.100, -0.100])")
    # 3: FedAvg gains 0.1, the centralized model 0: difference 0.1 on every client
    assert v3 == "supported" and m3 == "gain, FedAvg - centralized +0.100 [+0.100, +0.100]"


def test_not_supported_and_inconclusive(tmp_path):
    # FedAvg hurts every client by 0.1; Personalized FedAvg ends 0.1 below FedAvg on every
    # client; the centralized model's gain differs from FedAvg's by +0.3, -0.3, +0.3, -0.3
    fed = write_run(
        tmp_path / "fed", [0.5, 0.5, 0.5, 0.5], {"epoch_1": [0.4, 0.4, 0.4, 0.4]}, {"epoch_1": 1}
    )
    cen = write_run(
        tmp_path / "cen", [0.5, 0.5, 0.5, 0.5], {"epoch_1": [0.1, 0.7, 0.1, 0.7]}, {"epoch_1": 1}
    )
    pfed = write_run(
        tmp_path / "pfed", [0.5, 0.5, 0.5, 0.5], {"epoch_1": [0.3, 0.3, 0.3, 0.3]}, {"epoch_1": 1}
    )
    runs = {r: pc.read_run(r, p) for r, p in zip(pc.ROLES, (fed, cen, pfed), strict=True)}
    verdicts = [v for _, v in pc.claims("t", runs)]
    assert verdicts == [
        "not supported",
        "not supported",
        "inconclusive (the 95% CI contains 0)",
    ]


def test_the_markdown_tables_and_a_task_with_runs_missing(emnist_runs, capsys):
    fed, cen, pfed = emnist_runs
    spec = f"emnist={fed},{cen},{pfed}"
    assert pc.main(["--task", spec, "--task", f"shakespeare={fed},-,"]) == 0
    out = capsys.readouterr().out
    rows = out.splitlines()
    fed_row = next(r for r in rows if r.startswith("| emnist | FedAvg |"))
    cells = [c.strip() for c in fed_row.strip("|").split("|")]
    assert cells[2] == "3,000"
    assert cells[3].startswith("0.650 [")
    assert cells[4] == "sgd (learning_rate 0.02), epoch 1 (on 2)"
    assert cells[5].startswith("0.750 [")
    assert cells[6:] == ["+0.100 [+0.100, +0.100]", "100%", "0%"]
    assert "| shakespeare | centralized | not run |" in out
    assert "| claim | emnist | shakespeare |" in out
    claim3 = next(r for r in rows if r.startswith("| 3."))
    assert claim3.endswith(
        "| **supported**: gain, FedAvg - centralized +0.100 [+0.100, +0.100] | "
        "**not run (needs the centralized run)** |"
    )
    claim1 = next(r for r in rows if r.startswith("| 1."))
    assert claim1.count("**supported**: gain +0.100 [+0.100, +0.100]") == 2


def test_a_run_without_validation_clients_is_marked(tmp_path, capsys):
    fed = write_run(tmp_path / "fed", [0.5] * 4, {"epoch_1": [0.6] * 4}, None)
    assert pc.main(["--task", f"x={fed},-,-"]) == 0
    assert "(**not held out**: chosen on the reported clients)" in capsys.readouterr().out


def test_refusals_are_one_line_with_exit_2(emnist_runs, tmp_path, capsys):
    fed, cen, _ = emnist_runs
    other = write_run(
        tmp_path / "other",
        [0.5] * 4,
        {"epoch_1": [0.6] * 4},
        {"epoch_1": 1},
        clients=("c1", "c2", "c3", "c9"),
    )
    cases = {
        f"a={fed},{cen}": "expected NAME=FEDAVG_DIR,CENTRALIZED_DIR,PFEDAVG_DIR",
        f"={fed},{cen},-": "expected NAME=",
        f"a={fed},{other},-": "report different clients (3 in common of 4 and 4)",
        f"a={tmp_path / 'nope'},-,-": "does not exist",
    }
    for spec, words in cases.items():
        assert pc.main(["--task", spec]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and err.count("\n") == 1, err
    assert pc.main(["--task", f"a={fed},-,-", "--task", f"a={fed},-,-"]) == 2
    assert "given twice" in capsys.readouterr().err


def test_the_paper_configs_share_seed_split_and_personalization():
    """The three EMNIST runs differ only in training: same seed, split, reported and
    validation clients, strategies and tuning grids; each validates."""
    configs = {}
    for name in pc.ROLES:
        path = ROOT / "bench" / "paper" / f"{name}.toml"
        ExperimentConfig.from_toml(path).validate()
        configs[name] = tomllib.loads(path.read_text())
    shared = {k: v for k, v in configs["fedavg"].items() if k not in ("stages", "eval_every")}
    assert shared["num_val_clients"] > 0 and shared["data_dir"] == "../shared/data/femnist_sample"
    for name, c in configs.items():
        assert {k: v for k, v in c.items() if k not in ("stages", "eval_every")} == shared, name
    assert [s["name"] for s in configs["pfedavg"]["stages"]] == ["fedavg", "reptile"]
    # Personalized FedAvg's first stage is run (a)'s FedAvg stage, fewer rounds
    fed_stage, first = configs["fedavg"]["stages"][0], configs["pfedavg"]["stages"][0]
    assert {**first, "rounds": fed_stage["rounds"]} == fed_stage
    assert configs["centralized"]["stages"][0]["name"] == "centralized"
