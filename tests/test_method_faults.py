"""Faults, for every method trained in the federation (``fedp13n.algorithms.METHODS``):
a run killed -9 mid-run then ``--resume``d ends bit for bit where an uninterrupted run
does (global weights and every client's state), a worker killed -9 mid-task has its task
retried with the same client state and changes nothing, and Ray gives the numbers of the
in-process executor, client state included. The runs are tiny (``method_runs``' task of
16 clients and a 69-parameter model with a batch-norm layer, FedBN's local layer), so
each case takes a second or two; one forkserver (torch imported once) starts the killed
runs and the workers, and one local Ray instance serves the module."""

from __future__ import annotations

import functools
from pathlib import Path

import method_runs  # tests/: the tiny task and the fault helpers
import numpy as np
import pytest
import torch
from method_runs import KilledOnce, client_state, federated_rounds, run_killed_at_checkpoint
from typer.testing import CliRunner

from fedp13n.algorithms.fedper import METHODS, keeps_state
from fedp13n.cli.main import app
from fedp13n.data.client_data import ClientData
from fedp13n.execution import InProcessExecutor, LocalProcessExecutor
from fedp13n.rundir import layout as rd

#: Each method's case: its own settings, kept small (one head epoch, two pFedMe steps).
#: FedProx is FedAvg with proximal_mu; Per-FedAvg keeps no state (both its variants).
CASES = {
    "fedper": {},
    "fedrep": {"head_epochs": 1},
    "lg_fedavg": {},
    "ditto": {},
    "scaffold": {},
    "per_fedavg_fo": {"method": "per_fedavg", "per_fedavg_variant": "fo"},
    "per_fedavg_hf": {"method": "per_fedavg", "per_fedavg_variant": "hf"},
    "pfedme": {"pfedme_k": 2},
    "fedbn": {},
    "apfl": {},
    "fedprox": {"method": "fedavg", "proximal_mu": 0.1},
}


def _method(case: str) -> str:
    return CASES[case].get("method", case)


def test_the_cases_cover_every_method():
    assert {_method(c) for c in CASES} == set(METHODS)


def _flags(case: str) -> list[str]:
    settings = {"method": _method(case), **CASES[case]}
    return [x for k, v in settings.items() for x in (f"--{k.replace('_', '-')}", str(v))]


RUN = [
    "run", "--dataset", "method_runs:load", "--model", "method_runs:build", "--rounds", "5",
    "--clients-per-round", "3", "--local-epochs", "1", "--batch-size", "4", "--client-lr",
    "0.1", "--num-eval-clients", "2", "--checkpoint-every", "1", "--keep-checkpoints", "2",
    "--no-progress", "--no-report", "--strategy", "sgd:0.05", "--p13n-epochs", "1",
]  # fmt: skip


def _args(case: str, output_dir: Path, executor: str = "in-process") -> list[str]:
    """The case's run (``RUN``, its method and settings) into ``output_dir``."""
    return [*RUN, *_flags(case), "--executor", executor, "--output-dir", str(output_dir)]


def _run(args: list[str]) -> None:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """``uninterrupted(case)``: the folder of the case's run without faults (run once)."""
    runs: dict[str, Path] = {}

    def run(case: str) -> Path:
        if case not in runs:
            runs[case] = tmp_path_factory.mktemp(case) / "run"
            _run(_args(case, runs[case]))
        return runs[case]

    return run


def _assert_same_run(a: Path, b: Path, stateful: bool) -> None:
    """The same global weights and, bit for bit, the same client state."""
    wa = torch.load(a / rd.GLOBAL_WEIGHTS, weights_only=True)
    wb = torch.load(b / rd.GLOBAL_WEIGHTS, weights_only=True)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wb)
    assert (a / rd.CLIENT_STATE).exists() == stateful == (b / rd.CLIENT_STATE).exists()
    if stateful:
        (ids_a, rows_a), (ids_b, rows_b) = client_state(a), client_state(b)
        assert ids_a == ids_b and len(ids_b) >= 5  # 5 rounds of 3 out of 12 clients
        assert rows_a.keys() == rows_b.keys()
        assert all(np.array_equal(rows_a[n], rows_b[n]) for n in rows_b)
        assert any(not np.array_equal(r[0], r[1]) for r in rows_b.values())  # per client
        # generations only for what the kept checkpoints (rounds 4, 5) need
        gens = sorted(p.name for p in (b / rd.CLIENT_STATE / "generations").iterdir())
        assert gens == ["round_000005.npz"]


@pytest.mark.parametrize("case", list(CASES))
def test_kill_9_then_resume_gives_the_weights_and_client_state_of_a_run_without(
    tmp_path, case, uninterrupted
):
    killed = tmp_path / "killed"
    # killed where round 3's checkpoint is about to be written, after its client-state
    # commit: --resume starts from round 2's checkpoint and must undo that commit
    run_killed_at_checkpoint(_args(case, killed), 3)
    assert rd.checkpoint_path(killed, 2).exists() and not rd.checkpoint_path(killed, 3).exists()
    stateful = keeps_state(_method(case))
    if stateful:
        assert '"round":3,' in (killed / rd.CLIENT_STATE / "index.json").read_text()
    res = CliRunner().invoke(app, [*_args(case, killed), "--resume"])
    assert res.exit_code == 0, res.output
    assert "resumed from" in res.output and ("client state:" in res.output) == stateful
    _assert_same_run(killed, uninterrupted(case), stateful)


# -- a worker killed -9 mid-task ---------------------------------------------------------------
#: Each round's clients: 'b' has state of its own in round 2, when its worker is killed.
SCHEDULE = [["a", "b"], ["b", "c"], ["a", "b", "c"]]


def _rounds(folder: Path, case: str, executor, work=None) -> tuple[dict, dict]:
    train, _ = method_runs.load()
    data = ClientData.from_mapping({k: train[f"w0{i}"] for i, k in enumerate("abc")})
    return federated_rounds(
        folder, functools.partial(method_runs.build, 3), data, SCHEDULE, _method(case), work,
        client_optimizer_fn=functools.partial(torch.optim.SGD, lr=0.1), batch_size=4,
        executor=executor, **{k: v for k, v in CASES[case].items() if k != "method"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def one_worker():
    """One worker process, started (and replaced when killed) by a forkserver with torch
    and fedp13n imported: a replacement takes a fraction of a second."""
    method_runs.forkserver_context()
    with LocalProcessExecutor(num_workers=1, max_retries=1, start_method="forkserver") as ex:
        yield ex


@pytest.mark.parametrize("case", list(CASES))
def test_a_killed_workers_retried_task_keeps_the_weights_and_client_state(
    tmp_path, case, one_worker
):
    here = _rounds(tmp_path / "here", case, InProcessExecutor())
    marker = tmp_path / "killed-once"
    work = functools.partial(KilledOnce, marker=str(marker))
    there = _rounds(tmp_path / "there", case, one_worker, work)
    assert marker.exists()  # the worker was killed running 'b' in round 2, the task retried
    assert all(torch.equal(here[0][n], there[0][n]) for n in here[0])
    assert (here[1]["b"] is not None) == keeps_state(_method(case))
    for c in "abc":
        if here[1][c] is not None:
            assert all(torch.equal(here[1][c][n], there[1][c][n]) for n in here[1][c])


# -- Ray ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance with one CPU (one worker process) for the module's tests,
    which the runs' RayExecutor uses (it starts none of its own); a skip where Ray cannot
    start."""
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(method_runs)  # Ray's own cloudpickle
    try:
        ray.init(num_cpus=1, include_dashboard=False, address="local", log_to_driver=False)
    except Exception as e:  # no shared memory, no ports, ...: not what these tests test
        pytest.skip(f"a local Ray instance cannot start here: {type(e).__name__}: {e}")
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.ray
@pytest.mark.parametrize("case", ["fedper", "scaffold"])
def test_ray_gives_the_weights_and_client_state_of_the_in_process_executor(
    tmp_path, case, local_ray, uninterrupted
):
    res = CliRunner().invoke(app, _args(case, tmp_path / "ray", executor="ray"))
    assert res.exit_code == 0, res.output
    assert "executor: RayExecutor(num_workers=1" in res.output
    _assert_same_run(tmp_path / "ray", uninterrupted(case), stateful=True)
