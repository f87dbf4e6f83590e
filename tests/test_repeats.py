"""``fedp13n run --repeats N``: one configuration over seeds, mean +- sample std over the
seeds beside each seed's 95% interval, resumable per seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedp13n.cli.main import app
from fedp13n.experiments.config import ExperimentConfig
from fedp13n.reporting.repeats import REPEATS_JSON, REPEATS_MD, aggregate, repeats_markdown
from fedp13n.rundir import layout as rd

CONFIG = """
dataset = "synthetic"
synthetic_clients = 12
num_train_clients = 8
num_p13n_clients = 4
rounds = 1
clients_per_round = 2
local_epochs = 1
eval_every = 1
p13n_eval_every = 1
num_eval_clients = 4
p13n_epochs = 1
executor = "in-process"

[[strategies]]
name = "sgd"
optimizer = "sgd"
learning_rate = 0.02
"""


def _stats(mean, lo, hi, improved=None, hurt=None, n=10):
    return {"n": n, "mean": mean, "median": mean, "ci_low": lo, "ci_high": hi, "std": 0.1,
            "improved": improved, "hurt": hurt}  # fmt: skip


def _summary(base, sgd1, sgd2, own):
    s = {
        "baseline": _stats(base, base - 0.05, base + 0.05),
        "strategies": {"sgd": {"epoch_1": _stats(sgd1, sgd1 - 0.04, sgd1 + 0.04, 0.6, 0.3)}},
        "selected": {},
        "other_protocols": {"tff": "text", "tuned": False, "note": "text",
                            "own_state": _stats(own, own - 0.02, own + 0.02)},
    }  # fmt: skip
    if sgd2 is not None:
        s["strategies"]["sgd"]["epoch_2"] = _stats(sgd2, sgd2 - 0.03, sgd2 + 0.03, 0.7, 0.2)
    return s


def test_aggregate_of_three_runs_is_numpys_mean_and_sample_std():
    base, sgd1, sgd2, own = (
        [0.50, 0.60, 0.70],
        [0.61, 0.65, 0.72],
        [0.80, 0.90, None],
        [0.3, 0.4, 0.8],
    )
    summaries = [_summary(*v) for v in zip(base, sgd1, sgd2, own, strict=True)]
    agg = aggregate(summaries, [7, 8, 9])
    rows = {(r["kind"], r["name"], r["epoch"]): r for r in agg["rows"]}
    assert list(rows) == [
        ("baseline", "baseline", None),
        ("strategy", "sgd", "epoch_1"),
        ("strategy", "sgd", "epoch_2"),
        ("protocol", "own_state", None),
    ]
    for key, values in [(("baseline", "baseline", None), base),
                        (("strategy", "sgd", "epoch_1"), sgd1),
                        (("protocol", "own_state", None), own)]:  # fmt: skip
        r = rows[key]
        assert r["n_seeds"] == 3
        assert r["mean"] == pytest.approx(np.mean(values), abs=1e-15)
        assert r["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-15)
        assert [p["mean"] for p in r["per_seed"]] == values
        assert [p["seed"] for p in r["per_seed"]] == [7, 8, 9]
    assert rows["baseline", "baseline", None]["std"] == pytest.approx(0.1, abs=1e-15)  # by hand
    two = rows["strategy", "sgd", "epoch_2"]  # seed 9 has no epoch 2: over two seeds
    assert (two["n_seeds"], [p["seed"] for p in two["per_seed"]]) == (2, [7, 8])
    assert two["mean"] == pytest.approx(0.85) and two["std"] == pytest.approx(0.1 / np.sqrt(2))
    assert rows["strategy", "sgd", "epoch_1"]["helped_mean"] == pytest.approx(0.6)
    first = rows["strategy", "sgd", "epoch_1"]["per_seed"][0]
    assert (first["ci_low"], first["ci_high"], first["hurt"]) == pytest.approx((0.57, 0.65, 0.3))
    md = repeats_markdown(agg)
    assert "mean +- std over 3 seeds" in md
    assert "| baseline (global model) | 0.6000 +- 0.1000 | 3 |" in md
    assert "| sgd, epoch 2 | 0.8500 +- 0.0707 | 2 |" in md and "ddof=1" in md
    assert "0.6100 [0.5700, 0.6500] 60%/30%" in md  # seed 7's own interval and shares
    one = aggregate(summaries[:1], [0])  # a single seed has no standard deviation
    assert one["rows"][0]["std"] is None and "0.5000 +- n/a" in repeats_markdown(one)


def _run(*args):
    return CliRunner().invoke(app, ["run", *map(str, args), "--no-report", "--no-progress"])


def test_repeats_run_two_seeds_aggregate_them_and_resume_without_rerunning(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(CONFIG)
    out = tmp_path / "rep"
    res = _run("--config", toml, "--output-dir", out, "--repeats", 2, "--seed", 5)
    assert res.exit_code == 0, res.output
    assert "mean +- std over 2 seeds" in res.output
    summaries = [json.loads((out / f"seed={s}" / rd.SUMMARY).read_text()) for s in (5, 6)]
    for s in (5, 6):
        assert ExperimentConfig.from_toml(out / f"seed={s}" / rd.CONFIG).seed == s
    sgd = [s["strategies"]["sgd"]["epoch_1"]["mean"] for s in summaries]
    base = [s["baseline"]["mean"] for s in summaries]
    assert sgd[0] != sgd[1] and base[0] != base[1]  # the seeds give different runs
    agg = json.loads((out / REPEATS_JSON).read_text())
    assert agg["seeds"] == [5, 6] and agg["runs"] == ["seed=5", "seed=6"]
    rows = {(r["name"], r["epoch"]): r for r in agg["rows"]}
    assert rows["sgd", "epoch_1"]["mean"] == pytest.approx((sgd[0] + sgd[1]) / 2, abs=1e-15)
    assert rows["sgd", "epoch_1"]["std"] == pytest.approx(abs(sgd[0] - sgd[1]) / 2**0.5, abs=1e-15)
    assert rows["baseline", None]["std"] == pytest.approx(np.std(base, ddof=1), abs=1e-15)
    per_seed = rows["sgd", "epoch_1"]["per_seed"]
    for p, summary in zip(per_seed, summaries, strict=True):
        e = summary["strategies"]["sgd"]["epoch_1"]
        assert (p["ci_low"], p["ci_high"], p["improved"], p["hurt"]) == (
            e["ci_low"], e["ci_high"], e["improved"], e["hurt"])  # fmt: skip
    assert (out / REPEATS_MD).read_text() in res.output

    stamps = [(out / f"seed={s}" / rd.SUMMARY).stat().st_mtime_ns for s in (5, 6)]
    res = _run("--output-dir", out, "--repeats", 2, "--resume")
    assert res.exit_code == 0, res.output
    assert res.output.count("done before") == 2 and "running" not in res.output
    assert [(out / f"seed={s}" / rd.SUMMARY).stat().st_mtime_ns for s in (5, 6)] == stamps
    assert json.loads((out / REPEATS_JSON).read_text()) == agg

    for args, message in [
        (["--output-dir", out, "--repeats", 2], "already holds repeats; pass --resume"),
        (["--output-dir", out, "--resume"], "continue them with --repeats N --resume"),
        (["--output-dir", out, "--repeats", 2, "--resume", "--rounds", 3],
         "the settings given differ"),
    ]:  # fmt: skip
        res = _run(*args)
        assert res.exit_code == 2 and message in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--repeats", 0], "--repeats must be at least 1"),
        (["--repeats", -1], "--repeats must be at least 1"),
        (["--repeats", 2, "--output-dir", None], "needs --output-dir"),
        (["--repeats", 2, "--resume", "--output-dir", "single"], "drop --repeats to resume it"),
        (["--repeats", 2, "--output-dir", "single"], "single run"),
        (["--repeats", 2, "--resume", "--output-dir", "empty"], "nothing to resume"),
        (["--repeats", 2, "--output-dir", "afile"], "is a file"),
    ],
)
def test_bad_repeats_are_one_line_errors(tmp_path, args, message):
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / rd.CONFIG).write_text(ExperimentConfig().to_toml())
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    if None in args:
        args = args[:-2]
    else:
        args = [tmp_path / a if a in ("single", "empty", "afile") else a for a in args]
    res = CliRunner().invoke(app, ["run", *map(str, args), "--dataset", "synthetic"])
    assert res.exit_code == 2, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_a_sweep_over_seed_gets_mean_and_std_per_other_setting(tmp_path):
    from fedp13n.experiments.sweep import RUNS, SweepConfig, write_seed_repeats

    sweep = SweepConfig.from_dict(
        {"dataset": "synthetic", "sweep": {"grid": {"local_epochs": [1, 2], "seed": [0, 1, 2]}}}
    )
    means = {1: [0.2, 0.4, 0.9], 2: [0.5, 0.55, None]}  # seed 2 of E=2 has not finished
    for e, values in means.items():
        for seed, m in enumerate(values):
            run = tmp_path / RUNS / f"local_epochs={e},seed={seed}"
            run.mkdir(parents=True)
            if m is not None:
                (run / rd.SUMMARY).write_text(json.dumps(_summary(m, m + 0.1, None, m)))
    md = write_seed_repeats(sweep, tmp_path)
    groups = json.loads((tmp_path / REPEATS_JSON).read_text())["groups"]
    assert [g["settings"] for g in groups] == [{"local_epochs": 1}, {"local_epochs": 2}]
    for g, e in zip(groups, (1, 2), strict=True):
        done = [m for m in means[e] if m is not None]
        base = g["rows"][0]
        assert g["seeds"] == list(range(len(done))) and base["n_seeds"] == len(done)
        assert base["mean"] == pytest.approx(np.mean(done), abs=1e-15)
        assert base["std"] == pytest.approx(np.std(done, ddof=1), abs=1e-15)
    text = md.read_text()
    assert "## local_epochs = 1" in text and "mean +- std over 3 seeds" in text
    assert "| baseline (global model) | 0.5000 +- 0.3606 | 3 |" in text  # std of .2 .4 .9
    one = SweepConfig.from_dict({"dataset": "synthetic", "sweep": {"grid": {"seed": [0]}}})
    assert write_seed_repeats(one, tmp_path / "x") is None
