"""Reports: summary statistics against plain loops, the HTML page, its images, compare, CLI."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from fedp13n.reporting import summary as sm
from fedp13n.reporting.compare import headline_table, load_runs, write_comparison
from fedp13n.reporting.report import PNG_FILES, SECTIONS, write_report
from fedp13n.rundir import layout as rd


def make_run_dir(
    path: Path,
    *,
    seed: int = 0,
    num_clients: int = 30,
    strategies: dict[str, float] | None = None,
    epochs: int = 3,
    rounds: int = 5,
    client_lr: float = 0.02,
) -> Path:
    """A run directory in the documented format from a seeded fake experiment.

    Accuracies are counts of correct test examples / test size (as a real run's are), so
    some clients are exactly unchanged. ``strategies``: name -> mean gain per epoch.
    """
    strategies = strategies or {"sgd": 0.05, "adam": 0.03}
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    strat_toml = "".join(
        f'\n[[strategies]]\nname = "{s}"\noptimizer = "{s if s in ("sgd", "adam") else "sgd"}"\n'
        f"learning_rate = 0.02\nepochs = {epochs}\n"
        for s in strategies
    )
    (path / rd.CONFIG).write_text(
        f'dataset = "synthetic"\nrounds = {rounds}\nclient_learning_rate = {client_lr}\n'
        f"seed = {seed}\n{strat_toml}"
    )
    with (path / rd.FEDAVG_METRICS).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=rd.FEDAVG_COLUMNS)
        w.writeheader()
        for r in range(1, rounds + 1):
            measured = r % 2 == 0 or r == rounds
            w.writerow(
                {
                    "round": r,
                    "loss": 3.5 / r + rng.uniform(0, 0.1),
                    "accuracy": 0.2 + 0.1 * r + rng.uniform(0, 0.02),
                    "num_examples": 2000,
                    "num_clients": 10,
                    "num_skipped_clients": 0,
                    "seconds": 1.5,
                    "examples_per_second": 1333.3,
                    "eval_loss": 3.0 / r if measured else "",
                    "eval_accuracy": 0.15 + 0.1 * r if measured else "",
                }
            )
    ids = [f"f{i:04d}_{i % 7:02d}" for i in range(num_clients)]
    n_train = rng.integers(40, 400, size=num_clients)
    n_test = rng.integers(5, 40, size=num_clients)
    base_correct = rng.binomial(n_test, rng.uniform(0.3, 0.8, size=num_clients))
    rows = []
    for s, gain in strategies.items():
        for e in range(1, epochs + 1):
            delta = rng.binomial(3, 0.5, size=num_clients) - 1 + np.round(gain * e * n_test)
            delta[::6] = 0  # some clients exactly unchanged
            correct = np.clip(base_correct + delta.astype(int), 0, n_test)
            for i, cid in enumerate(ids):
                rows.append(
                    {
                        "client_id": cid,
                        "num_train_examples": int(n_train[i]),
                        "num_test_examples": int(n_test[i]),
                        "strategy": s,
                        "epoch": f"epoch_{e}",
                        "loss": float(rng.uniform(0.5, 2.0)),
                        "accuracy": correct[i] / n_test[i],
                        "baseline_loss": 1.5,
                        "baseline_accuracy": base_correct[i] / n_test[i],
                    }
                )
    with (path / rd.PER_CLIENT).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=rd.PER_CLIENT_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return path


# -- an independent, plain computation from the CSV ---------------------------------------------
def plain_stats(run_dir: Path) -> tuple[dict, dict]:
    """(baseline per client, {(strategy, epoch): list of (accuracy, baseline)}) by hand."""
    baseline: dict[str, float] = {}
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with (run_dir / rd.PER_CLIENT).open() as f:
        for row in csv.DictReader(f):
            baseline[row["client_id"]] = float(row["baseline_accuracy"])
            groups.setdefault((row["strategy"], row["epoch"]), []).append(
                (float(row["accuracy"]), float(row["baseline_accuracy"]))
            )
    return baseline, groups


def median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


@pytest.fixture
def run1(tmp_path: Path) -> Path:
    return make_run_dir(tmp_path / "run1")


def test_summary_equals_plain_computation(run1: Path) -> None:
    s = sm.summarize_run(run1)
    baseline, groups = plain_stats(run1)
    assert s.num_clients == 30 == s.baseline.n
    assert s.baseline.mean == pytest.approx(sum(baseline.values()) / len(baseline), abs=1e-12)
    assert s.baseline.median == pytest.approx(median(list(baseline.values())), abs=1e-12)
    assert [(r.strategy, r.epoch) for r in s.rows] == [
        (st, f"epoch_{e}") for st in ("sgd", "adam") for e in (1, 2, 3)
    ]
    for (strategy, epoch), pairs in groups.items():
        r = s.row(strategy, epoch)
        acc = [a for a, _ in pairs]
        diffs = [a - b for a, b in pairs]
        assert r.n == len(pairs) == 30
        assert r.mean == pytest.approx(sum(acc) / len(acc), abs=1e-12)
        assert r.median == pytest.approx(median(acc), abs=1e-12)
        assert r.mean_gain == pytest.approx(sum(diffs) / len(diffs), abs=1e-12)
        assert r.improved == sum(d > 1e-9 for d in diffs) / 30
        assert r.unchanged == sum(abs(d) <= 1e-9 for d in diffs) / 30
        assert r.hurt == sum(d < -1e-9 for d in diffs) / 30
        assert r.improved + r.unchanged + r.hurt == pytest.approx(1.0)
    # the fake makes every 6th client exactly unchanged: at least 5 of 30
    assert all(r.unchanged >= 5 / 30 for r in s.rows)
    assert s.headline == {
        "baseline_accuracy": s.baseline.mean,
        "sgd_epoch_1_accuracy": s.row("sgd", "epoch_1").mean,
        "adam_epoch_1_accuracy": s.row("adam", "epoch_1").mean,
    }


def test_summary_of_the_experiment_rows_equals_the_nested_result(tmp_path: Path) -> None:
    """The experiment's per_client.csv (from the TFF-style nested result) reads back right."""
    from fedp13n.reporting.result_report import per_client_rows

    ids = ["a", "b", "c"]
    nested = {
        "client_ids": ids,
        "baseline_metrics": {"loss": [1.0, 2.0, 3.0], "accuracy": [0.5, 0.25, 0.75]},
        "sgd": {
            "epoch_1": {
                "loss": [1, 1, 1],
                "accuracy": [0.75, 0.25, 0.5],
                "num_test_examples": [4] * 3,
            },
            "epoch_2": {
                "loss": [1, 1, 1],
                "accuracy": [1.0, 0.5, 0.75],
                "num_test_examples": [4] * 3,
            },
            "num_train_examples": [10, 20, 30],
        },
    }
    rows = per_client_rows(nested, {"a": 10, "b": 20, "c": 30})
    run = tmp_path / "run"
    run.mkdir()
    with (run / rd.PER_CLIENT).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=rd.PER_CLIENT_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    s = sm.summarize_run(run)
    assert s.baseline.mean == pytest.approx(0.5) and s.baseline.median == 0.5
    e1, e2 = s.row("sgd", "epoch_1"), s.row("sgd", "epoch_2")
    assert e1.mean == pytest.approx(0.5) and e2.mean == pytest.approx(0.75)
    assert (e1.improved, e1.unchanged, e1.hurt) == (1 / 3, 1 / 3, 1 / 3)
    assert (e2.improved, e2.unchanged, e2.hurt) == (2 / 3, 1 / 3, 0.0)
    assert e2.mean_gain == pytest.approx(0.25)
    assert s.headline == {"baseline_accuracy": s.baseline.mean, "sgd_epoch_1_accuracy": e1.mean}


def test_fractions_with_hand_made_differences(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "r", num_clients=4, strategies={"sgd": 0.0}, epochs=1)
    rows = list(csv.DictReader((run / rd.PER_CLIENT).open()))
    base = [0.5, 0.5, 0.5, 0.5]
    acc = [0.6, 0.5, 0.4, 0.5 + 1e-12]  # improved, unchanged, hurt, unchanged (tolerance)
    for row, b, a in zip(rows, base, acc, strict=True):
        row["baseline_accuracy"], row["accuracy"] = b, a
    with (run / rd.PER_CLIENT).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=rd.PER_CLIENT_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    r = sm.summarize_run(run).row("sgd", "epoch_1")
    assert (r.improved, r.unchanged, r.hurt) == (0.25, 0.5, 0.25)
    assert r.mean == pytest.approx(0.5)
    assert r.mean_gain == pytest.approx(0.0, abs=1e-12)


def test_clients_without_a_number_are_left_out_and_counted(run1: Path) -> None:
    rows = list(csv.DictReader((run1 / rd.PER_CLIENT).open()))
    rows[0]["accuracy"] = "nan"  # sgd epoch_1 of the first client: no test examples
    with (run1 / rd.PER_CLIENT).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=rd.PER_CLIENT_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    s = sm.summarize_run(run1)
    r = s.row("sgd", "epoch_1")
    kept = [float(x["accuracy"]) for x in rows[1:30]]
    assert all(x["strategy"] == "sgd" and x["epoch"] == "epoch_1" for x in rows[:30])
    assert r.n == 29
    assert r.mean == pytest.approx(sum(kept) / 29, abs=1e-12)
    assert s.row("sgd", "epoch_2").n == 30 and s.baseline.n == 30
    assert np.isfinite([r.ci_low, r.ci_high]).all()


def test_bootstrap_ci_is_reproducible_and_has_the_textbook_width() -> None:
    values = np.random.default_rng(1).uniform(0, 1, size=400)
    lo, hi = sm.bootstrap_mean_ci(values, key=("x",))
    assert lo < values.mean() < hi
    assert (lo, hi) == sm.bootstrap_mean_ci(values, key=("x",))  # same seed, same interval
    assert (lo, hi) != sm.bootstrap_mean_ci(values, key=("y",))
    # the normal approximation: half-width 1.96 * sd / sqrt(n), within 10%
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
    assert sm.bootstrap_mean_ci(np.full(5, 0.3), key=()) == pytest.approx((0.3, 0.3))
    assert all(np.isnan(sm.bootstrap_mean_ci(np.array([]))))


def test_summary_ci_contains_mean_and_epochs_sort_numerically(run1: Path) -> None:
    s = sm.summarize_run(run1)
    for r in (s.baseline, *s.rows):
        assert r.ci_low <= r.mean <= r.ci_high
        assert r.ci_low < r.ci_high
    assert sm.summarize_run(run1) == s
    assert sorted(["epoch_10", "epoch_2", "epoch_1"], key=sm.epoch_number) == [
        "epoch_1",
        "epoch_2",
        "epoch_10",
    ]


def test_format_summary_and_headline(run1: Path) -> None:
    s = sm.summarize_run(run1)
    text = sm.format_summary(s)
    assert f"{s.baseline.mean:.4f}" in text
    assert f"{s.row('adam', 'epoch_3').mean:.4f}" in text
    head = sm.format_headline(s).splitlines()
    assert len(head) == 3
    assert head[1].startswith("mean accuracy, sgd after 1 epoch:")
    assert head[1].endswith(f"{s.headline['sgd_epoch_1_accuracy']:.4f}")


# -- the report ---------------------------------------------------------------------------------
def embedded_images(doc: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', doc)]


def assert_not_blank(png: bytes) -> None:
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int64)
    assert img.shape[0] > 200 and img.shape[1] > 200
    assert img.std() > 5  # not blank
    packed = (img[..., 0] << 16) | (img[..., 1] << 8) | img[..., 2]
    assert len(np.unique(packed)) > 20  # not a single colour, not two


def test_report_has_every_section_and_real_images(run1: Path) -> None:
    path = write_report(run1)
    assert path == run1 / rd.REPORT
    doc = path.read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in doc
    images = embedded_images(doc)
    assert len(images) == len(PNG_FILES) == 5
    for png, name in zip(images, PNG_FILES.values(), strict=True):
        assert (run1 / name).read_bytes() == png  # the same PNG is written beside the page
        assert_not_blank(png)
    assert "http://" not in doc and "https://" not in doc  # self-contained
    assert "client_learning_rate = 0.02" in doc  # the config is shown
    # the summary table shows the directly computed numbers
    _, groups = plain_stats(run1)
    acc = [a for a, _ in groups[("sgd", "epoch_2")]]
    assert f'<td class="num">{sum(acc) / len(acc):.4f}</td>' in doc
    saved = json.loads((run1 / rd.SUMMARY).read_text())
    assert saved["strategies"]["adam"]["epoch_1"]["mean"] == pytest.approx(
        sum(a for a, _ in groups[("adam", "epoch_1")]) / 30
    )
    assert saved["headline"]["baseline_accuracy"] == pytest.approx(
        sm.summarize_run(run1).baseline.mean
    )


def test_report_to_other_folder_and_without_fedavg_metrics(run1: Path, tmp_path: Path) -> None:
    (run1 / rd.FEDAVG_METRICS).unlink()
    with pytest.warns(sm.ReportWarning, match="has no fedavg_metrics.csv"):
        path = write_report(run1, tmp_path / "out")
    assert path == tmp_path / "out" / rd.REPORT
    doc = path.read_text()
    fedavg = doc[doc.index('<section id="fedavg">') : doc.index('<section id="distribution">')]
    assert '<p class="missing"><b>Not available: FedAvg loss and accuracy per round.</b>' in fedavg
    assert f"{run1} has no fedavg_metrics.csv" in fedavg
    assert len(embedded_images(doc)) == 4
    assert not (run1 / rd.REPORT).exists()


def test_report_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(sm.ReportError, match="does not exist"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(sm.ReportError, match="per_client.csv is missing"):
        write_report(tmp_path / "empty")
    run = make_run_dir(tmp_path / "bad")
    (run / rd.PER_CLIENT).write_text("client_id,accuracy\nf1,0.5\n")
    with pytest.raises(sm.ReportError, match="missing column"):
        write_report(run)


# -- compare ------------------------------------------------------------------------------------
def test_compare_two_runs(tmp_path: Path) -> None:
    a = make_run_dir(tmp_path / "a" / "run")
    b = make_run_dir(
        tmp_path / "b" / "run", seed=1, client_lr=0.05, strategies={"sgd": 0.08, "fast": 0.1}
    )
    path = write_comparison([a, b], tmp_path / "cmp")
    doc = path.read_text()
    for sid in ("runs", "details", "by-epoch", "best", "fedavg", "configs"):
        assert f'<section id="{sid}">' in doc
    # same folder names: labels get the parent; differing config keys become columns
    assert "<td>a/run</td>" in doc and "<td>b/run</td>" in doc
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", doc)
    assert "client_learning_rate" in headers and "strategies.fast" in headers
    assert "rounds" not in headers  # the same in both runs
    assert "<td>(absent)</td>" in doc  # run a has no strategy 'fast'
    sb = sm.summarize_run(b)
    assert f"{sb.row('fast', 'epoch_3').mean:.4f}" in doc
    images = embedded_images(doc)
    assert len(images) == 3
    for png in images:
        assert_not_blank(png)
    with pytest.raises(sm.ReportError, match="at least two"):
        write_comparison([a], tmp_path / "cmp2")
    with pytest.raises(sm.ReportError, match="twice"):
        write_comparison([a, a], tmp_path / "cmp2")


# -- CLI ----------------------------------------------------------------------------------------
@pytest.fixture
def cli() -> typer.Typer:
    from fedp13n.cli import report_cmd

    app = typer.Typer()
    report_cmd.register(app)
    return app


def test_cli_report_and_compare(cli: typer.Typer, tmp_path: Path) -> None:
    a = make_run_dir(tmp_path / "a")
    b = make_run_dir(tmp_path / "b", seed=3)
    runner = CliRunner()
    res = runner.invoke(cli, ["report", str(a), "--output", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert f"report: {tmp_path / 'rep' / rd.REPORT}" in res.output
    assert "mean baseline accuracy:" in res.output
    res = runner.invoke(cli, ["compare", str(a), str(b), "-o", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cmp" / "comparison.html").exists()


def test_cli_user_errors_exit_2_with_one_line(cli: typer.Typer, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    a = make_run_dir(tmp_path / "a")
    runner = CliRunner()
    for args, message in (
        (["report", str(tmp_path / "missing")], "does not exist"),
        (["report", str(tmp_path / "empty")], "not a finished run directory"),
        (["compare", str(a)], "at least two"),
        (["compare", str(a), str(tmp_path / "empty")], "not a finished run directory"),
    ):
        res = runner.invoke(cli, args)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output
        assert "Traceback" not in res.output
        assert len(res.output.strip().splitlines()) == 1


def test_cli_report_without_fedavg_metrics_warns_in_one_line(
    cli: typer.Typer, run1: Path, tmp_path: Path
) -> None:
    (run1 / rd.FEDAVG_METRICS).unlink()
    res = CliRunner().invoke(cli, ["report", str(run1), "--no-summary"])
    assert res.exit_code == 0, res.output
    warns = [line for line in res.output.splitlines() if line.startswith("warning: ")]
    assert warns == [
        f"warning: {run1} has no fedavg_metrics.csv (the log of FedAvg's rounds): the report "
        f"has no FedAvg training curves; copy the run's fedavg_metrics.csv into {run1} to get "
        "them."
    ]
    assert 'class="missing"' in (run1 / rd.REPORT).read_text()
    other = make_run_dir(tmp_path / "other", seed=2)
    res = CliRunner().invoke(cli, ["compare", str(run1), str(other), "-o", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    warns = [line for line in res.output.splitlines() if line.startswith("warning: ")]
    assert len(warns) == 1 and "in run(s) run1:" in warns[0]
    doc = (tmp_path / "c" / "comparison.html").read_text()
    assert "<b>Not available: FedAvg curves of run1.</b>" in doc
    assert len(embedded_images(doc)) == 3  # the other run's curves are still drawn


def _drop_epoch(run: Path, strategy: str, epoch: str) -> None:
    """A strategy evaluated every 2 epochs: no ``epoch_1`` rows (``epochs_per_eval = 2``)."""
    with (run / rd.PER_CLIENT).open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if (r["strategy"], r["epoch"]) != (strategy, epoch)]
    with (run / rd.PER_CLIENT).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=rd.PER_CLIENT_COLUMNS)
        w.writeheader()
        w.writerows(rows)


def test_headline_uses_each_strategys_first_evaluated_epoch(
    run1: Path, tmp_path: Path, cli: typer.Typer
) -> None:
    _drop_epoch(run1, "adam", "epoch_1")  # adam: epoch_2 and epoch_3 only
    s = sm.summarize_run(run1)
    adam2 = s.row("adam", "epoch_2").mean
    assert s.headline == {
        "baseline_accuracy": s.baseline.mean,
        "sgd_epoch_1_accuracy": s.row("sgd", "epoch_1").mean,
        "adam_epoch_2_accuracy": adam2,
    }
    head = sm.format_headline(s).splitlines()
    assert len(head) == 3
    assert head[2].startswith("mean accuracy, adam after 2 epochs:")
    assert head[2].endswith(f"{adam2:.4f}")
    res = CliRunner().invoke(cli, ["report", str(run1), "-o", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert f"mean accuracy, adam after 2 epochs: {adam2:.4f}" in res.output
    doc = (tmp_path / "rep" / rd.REPORT).read_text()
    assert f"<div>adam, 2 epochs<b>{adam2:.4f}</b></div>" in doc
    saved = json.loads((tmp_path / "rep" / rd.SUMMARY).read_text())["headline"]
    assert saved["adam_epoch_2_accuracy"] == pytest.approx(adam2)
    # compare: every strategy's headline number is a column, n/a where a run lacks it
    other = make_run_dir(tmp_path / "other", seed=4, strategies={"sgd": 0.05, "fast": 0.1})
    runs = load_runs([run1, other])
    table = headline_table(runs)
    assert [list(r) for r in table] == [list(table[0])] * 2
    assert [k for k in table[0] if "epoch" in k] == ["sgd epoch 1", "adam epoch 2", "fast epoch 1"]
    fast1 = sm.summarize_run(other).row("fast", "epoch_1").mean
    assert table[0]["adam epoch 2"] == f"{adam2:.4f}" and table[0]["fast epoch 1"] == "n/a"
    assert table[1]["adam epoch 2"] == "n/a" and table[1]["fast epoch 1"] == f"{fast1:.4f}"


def _sweep_dir(path: Path, comparison: bool) -> Path:
    (path / "runs" / "local_epochs=1").mkdir(parents=True)
    (path / "sweep.toml").write_text("[sweep]\ngrid = { local_epochs = [1] }\n")
    (path / "sweep.csv").write_text("run\n")
    if comparison:
        (path / "comparison.html").write_text("<html></html>")
    return path


def test_report_and_compare_of_a_sweep_directory_point_to_its_runs(
    cli: typer.Typer, tmp_path: Path
) -> None:
    sweep = _sweep_dir(tmp_path / "sw", comparison=True)
    a = make_run_dir(tmp_path / "a")
    with pytest.raises(sm.ReportError, match="is a sweep directory"):
        write_report(sweep)
    for args, message in (
        (
            ["report", str(sweep)],
            f"error: {sweep} is a sweep directory: report its runs ({sweep}/runs/<run>) or "
            f"open {sweep}/comparison.html.",
        ),
        (
            ["compare", str(a), str(sweep)],
            f"error: {sweep} is a sweep directory: compare its runs ({sweep}/runs/<run>) or "
            f"open {sweep}/comparison.html.",
        ),
    ):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 2, res.output
        assert res.output.strip().splitlines() == [message]
    # a sweep with fewer than two finished runs has no comparison to open
    bare = _sweep_dir(tmp_path / "bare", comparison=False)
    res = CliRunner().invoke(cli, ["report", str(bare)])
    assert res.exit_code == 2
    assert (
        res.output.strip()
        == f"error: {bare} is a sweep directory: report its runs ({bare}/runs/<run>)."
    )


_HOLD_LOCK = (
    "import sys\n"
    "from fedp13n.rundir.lock import run_dir_lock\n"
    "with run_dir_lock(sys.argv[1]):\n"
    "    print('locked', flush=True)\n"
    "    sys.stdin.read()\n"
)


def test_report_of_a_run_still_in_progress_says_so(cli: typer.Typer, tmp_path: Path) -> None:
    import sys

    running = tmp_path / "running"
    running.mkdir()
    (running / rd.CONFIG).write_text('dataset = "synthetic"\n')
    finished = make_run_dir(tmp_path / "finished")
    a = make_run_dir(tmp_path / "a", seed=1)
    holders = [
        subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, str(d)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for d in (running, finished)  # a finished run resumed: still being written
    ]
    try:
        for h in holders:
            assert h.stdout.readline().strip() == "locked"
        for d, h in zip((running, finished), holders, strict=True):
            for args, verb in (
                (["report", str(d)], "report"),
                (["compare", str(a), str(d)], "compare"),
            ):
                res = CliRunner().invoke(cli, args)
                assert res.exit_code == 2, res.output
                assert res.output.strip().splitlines() == [
                    f"error: a run is still writing into {d} (pid {h.pid}); {verb} it when it "
                    "has finished."
                ]
    finally:
        for h in holders:
            h.communicate("", timeout=30)
    # released: the finished run is a run again; the unfinished one is what it is
    assert sm.check_run_dir(finished) == finished
    with pytest.raises(sm.ReportError, match="per_client.csv is missing"):
        sm.check_run_dir(running)
    # the run's own process holds the lock while it writes its report: not refused
    from fedp13n.rundir.lock import run_dir_lock

    with run_dir_lock(finished):
        assert sm.check_run_dir(finished) == finished


# -- a real browser ------------------------------------------------------------------------------
def test_report_loads_in_headless_chromium(run1: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    path = write_report(run1)
    res = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            path.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    for sid in SECTIONS:
        assert f'id="{sid}"' in dom
    assert dom.count("data:image/png;base64,") == 5


# -- the "best" strategy: held out or said plainly (issue 17) --------------------------------------
def _write_tuning(run: Path, validation: dict[str, dict[str, float]], n: int = 4) -> None:
    record = {
        "validation_client_ids": [f"v{i}" for i in range(n)],
        "strategies": {},
        "validation_accuracy": validation,
    }
    (run / rd.TUNING).write_text(json.dumps(record))


def _headline_labels(doc: str) -> list[str]:
    box = doc[doc.index('<div class="headline">') :]
    return re.findall(r"<div>([^<]*)<b>", box[: box.index("</div></div>") + 12])


def test_best_without_validation_clients_is_labelled_not_held_out(run1: Path, tmp_path) -> None:
    s = sm.summarize_run(run1)
    highest = max(s.rows, key=lambda r: r.mean)
    choice = s.best_choice()
    assert choice.stats == highest and not choice.held_out
    assert choice.how == "highest on these clients (not a held-out choice)"
    doc = write_report(run1).read_text()
    label = f"highest on these clients (not a held-out choice): {highest.strategy}, epoch "
    assert f"{label}{sm.epoch_number(highest.epoch)}" in _headline_labels(doc)
    assert "best: " not in doc
    saved = json.loads((run1 / rd.SUMMARY).read_text())["best"]
    assert saved["held_out"] is False and saved["how"] == sm.NOT_HELD_OUT
    # compare names it the same way, per run
    other = make_run_dir(tmp_path / "run2", seed=1)
    rows = headline_table(load_runs([run1, other]))
    assert [r["how best was chosen"] for r in rows] == [sm.NOT_HELD_OUT] * 2


def test_best_with_validation_clients_is_chosen_there(run1: Path, tmp_path) -> None:
    s = sm.summarize_run(run1)
    highest = max(s.rows, key=lambda r: r.mean)
    assert (highest.strategy, highest.epoch) != ("adam", "epoch_1")
    # on the validation clients adam after one epoch is best: that is the choice, reported
    # with its numbers on the other clients
    _write_tuning(
        run1,
        {
            "sgd": {"epoch_1": 0.5, "epoch_2": 0.55, "epoch_3": 0.6},
            "adam": {"epoch_1": 0.7, "epoch_2": 0.6, "epoch_3": 0.58},
        },
    )
    s = sm.summarize_run(run1)
    choice = s.best_choice()
    assert choice.held_out and choice.validation_mean == 0.7
    assert choice.stats == s.row("adam", "epoch_1")
    assert choice.how == "best, chosen on the 4 validation clients"
    doc = write_report(run1).read_text()
    assert "best, chosen on the 4 validation clients: adam, epoch 1" in _headline_labels(doc)
    assert sm.NOT_HELD_OUT not in doc
    assert sm.tuning_lines(s) == [
        "4 validation clients (not among the clients reported above) chose the best strategy "
        "and epoch."
    ]
    other = make_run_dir(tmp_path / "run2", seed=1)
    rows = headline_table(load_runs([run1, other]))
    assert [r["best"] for r in rows[:1]] == ["adam, epoch 1"]
    assert [r["how best was chosen"] for r in rows] == [
        "best, chosen on the 4 validation clients",
        sm.NOT_HELD_OUT,
    ]
    cmp = write_comparison([run1, other], tmp_path / "cmp").read_text()
    assert "<td>best, chosen on the 4 validation clients</td>" in cmp
    assert f"<td>{sm.NOT_HELD_OUT}</td>" in cmp


# -- the report's top, small multiples, collapsed config; compare's data-set warning ---------------
def test_report_top_names_data_rounds_and_clients(run1: Path, tmp_path: Path) -> None:
    from fedp13n.reporting.report import SYNTHETIC_NOTE, run_facts

    s = sm.summarize_run(run1)
    assert run_facts(run1, {"dataset": "synthetic", "rounds": 5}, s) == [
        "Data: synthetic.",
        "FedAvg: 5 rounds.",
        "Personalization: 30 clients evaluated.",
    ]
    split = {"fedavg": ["a"] * 118, "validation": ["v"] * 4, "personalization": ["p"] * 38}
    (run1 / rd.SPLIT).write_text(json.dumps(split))
    config = {
        "dataset": "emnist",
        "data_dir": "/data/femnist",
        "rounds": 50,
        "clients_per_round": 10,
    }
    assert run_facts(run1, config, s) == [
        "Data: emnist from /data/femnist.",
        "FedAvg: 50 rounds of 10 clients, drawn from 118 FedAvg clients.",
        "Personalization: 30 clients evaluated (of 38 personalization clients); 4 validation "
        "clients held out for choices.",
    ]
    staged = {"dataset": "emnist", "rounds": 5, "stages": [{"rounds": 50}, {"name": "b"}]}
    assert run_facts(run1, staged, s)[1] == (
        "FedAvg: 55 rounds in 2 stages, drawn from 118 FedAvg clients."
    )
    staged["stages"][0]["name"] = "a"
    assert run_facts(run1, staged, s)[1] == (
        "FedAvg: 55 rounds in 2 stages (a, b), drawn from 118 FedAvg clients."
    )

    doc = write_report(run1).read_text()
    top = doc[: doc.index("<nav>")]  # above the table of contents
    assert "<li>Data: synthetic.</li>" in top and "<li>FedAvg: 5 rounds" in top
    assert "<li>Personalization: 30 clients evaluated (of 38 personalization clients)" in top
    assert f"<b>A demonstration, not a result.</b> {SYNTHETIC_NOTE}" in top
    # the config, collapsed at the bottom
    config = doc[doc.index('<section id="config">') :]
    assert config.index("<details><summary>config.toml") < config.index("client_learning_rate")
    # real data: no demonstration note
    (run1 / rd.CONFIG).write_text('dataset = "emnist"\nrounds = 5\n')
    doc = write_report(run1, tmp_path / "real").read_text()
    assert "<li>Data: emnist.</li>" in doc and "A demonstration" not in doc


def test_report_epoch_panel_is_small_multiples(tmp_path: Path) -> None:
    from fedp13n.reporting.plots import DPI

    names = ["sgd", "adam", "ditto", "head", "slow", "fast"]
    run = make_run_dir(tmp_path / "six", strategies=dict.fromkeys(names, 0.02))
    write_report(run)
    png = Image.open(io.BytesIO((run / PNG_FILES["by-epoch"]).read_bytes()))
    assert png.size == (round(3 * 5.0 * DPI), round((2 * 3.9 + 0.5) * DPI))  # 3 x 2 panels


def test_compare_warns_when_runs_use_different_data_sets(cli, tmp_path: Path) -> None:
    a = make_run_dir(tmp_path / "a")
    b = make_run_dir(tmp_path / "b", seed=1)
    text = (b / rd.CONFIG).read_text()
    (b / rd.CONFIG).write_text(text.replace('dataset = "synthetic"', 'dataset = "emnist"'))
    message = (
        "the runs use different data sets (a: synthetic; b: emnist): their accuracies are not "
        "comparable with each other."
    )
    with pytest.warns(sm.ReportWarning) as caught:
        doc = write_comparison([a, b], tmp_path / "cmp").read_text()
    assert [str(w.message) for w in caught] == [message]
    assert f'<p class="missing"><b>Different data sets.</b> {message}</p>' in doc
    res = CliRunner().invoke(cli, ["compare", str(a), str(b), "-o", str(tmp_path / "c2")])
    assert res.exit_code == 0, res.output
    assert [x for x in res.output.splitlines() if x.startswith("warning:")] == [
        f"warning: {message}"
    ]
    # the same data set: no warning
    c = make_run_dir(tmp_path / "c", seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        doc = write_comparison([a, c], tmp_path / "cmp3").read_text()
    assert "Different data sets" not in doc


def test_text_for_people_says_epoch_3(run1: Path) -> None:
    s = sm.summarize_run(run1)
    assert s.row("sgd", "epoch_3").label == "sgd, epoch 3"
    assert sm.epoch_text("epoch_12") == "epoch 12"
    tuning = {
        "validation_client_ids": ["v1", "v2"],
        "strategies": {
            "sgd": {"chosen": {"learning_rate": 0.1}, "chosen_epoch": "epoch_2",
                    "validation_accuracy": 0.5},
        },
    }  # fmt: skip
    (run1 / rd.TUNING).write_text(json.dumps(tuning))
    lines = sm.tuning_lines(sm.summarize_run(run1))
    assert (
        lines[1]
        == "  sgd: {'learning_rate': 0.1}, reported at epoch 2 (validation accuracy 0.5000)"
    )
    doc = write_report(run1).read_text()
    visible = re.sub(r"<pre>.*?</pre>", "", doc, flags=re.S)  # the config keeps its keys
    assert "epoch_" not in re.sub(r'src="data:[^"]*"', "", visible)
