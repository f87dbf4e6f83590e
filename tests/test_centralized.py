"""The centralized baseline (fedp13n.algorithms.centralized): SGD on the pooled examples of
the training clients, as a process with FedAvg's interface and as a training stage
(``--stage centralized:...``, ``[[stages]] name = "centralized"``) whose model the run
personalizes with the same strategies."""

from __future__ import annotations

import csv
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from fedp13n.algorithms import ClientSelection, load_checkpoint, save_checkpoint
from fedp13n.algorithms.centralized import build_centralized
from fedp13n.cli.main import app
from fedp13n.data import ClientData, load_dataset
from fedp13n.data.split import split_clients
from fedp13n.experiments.config import ConfigError, ExperimentConfig, StageConfig
from fedp13n.models.registry import model_fn_for
from fedp13n.rundir import layout as rd
from fedp13n.utils.optimizers import make_optimizer_fn
from fedp13n.utils.seeding import derive_rng, derive_seed


# -- the process against a plain torch loop -------------------------------------------------------
class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def _made_clients() -> ClientData:
    rng = np.random.default_rng(5)
    sizes = {"a": 7, "b": 5, "c": 9}
    return ClientData.from_clients(
        (c, rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, n))
        for c, n in sizes.items()
    )


SGD_M = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)


def _process(**kw):
    kw = {"epochs": 2, "batch_size": 4, "seed": 3, **kw}
    return build_centralized(_Tiny, SGD_M, **kw)


def test_two_rounds_are_a_plain_torch_loop_over_the_pooled_examples():
    cd = _made_clients()
    order = ["b", "a", "c"]  # pooled in the selection's order
    process = _process()
    state = process.initialize()
    losses = []
    for _ in range(2):
        state, metrics = process.next(state, ClientSelection(cd, order))
        losses.append(metrics.loss)
        assert metrics.num_examples == 2 * 21 and metrics.num_clients == 3

    # by hand: one model, one optimizer for both rounds (momentum carries over)
    x = np.concatenate([cd.create_dataset(c).x for c in order])
    y = np.concatenate([cd.create_dataset(c).y for c in order])
    torch.manual_seed(derive_seed(3, "init"))
    model = _Tiny()
    opt = SGD_M(model.parameters())
    for r in (1, 2):
        rng, loss_sum = derive_rng(3, "centralized-shuffle", r), 0.0
        for _epoch in range(2):
            perm = rng.permutation(21)
            for s in range(0, 21, 4):  # batches of 4, the last of 1
                idx = perm[s : s + 4]
                opt.zero_grad()
                loss = F.cross_entropy(model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
                loss.backward()
                opt.step()
                loss_sum += float(loss.detach()) * len(idx)
        assert losses[r - 1] == pytest.approx(loss_sum / 42, rel=1e-12)
    for k, v in model.state_dict().items():
        assert torch.equal(state.model[k], v), k
    assert state.round_num == 2 and state.optimizer_state["state"]  # momentum buffers kept


def test_resume_from_a_checkpoint_is_bit_identical(tmp_path):
    cd = _made_clients()
    select = ClientSelection(cd, list(cd.client_ids))
    straight = _process().initialize()
    for _ in range(2):
        straight, _ = _process().next(straight, select)
    one, _ = _process().next(_process().initialize(), select)
    save_checkpoint(tmp_path / "round_1.pt", one)
    resumed, _ = _process().next(load_checkpoint(tmp_path / "round_1.pt"), select)
    assert resumed.round_num == 2
    for k in straight.model:
        assert torch.equal(straight.model[k], resumed.model[k]), k
    # without the optimizer state (fresh momentum) round 2 is different: it matters
    fresh = _process().initialize()
    other, _ = _process().next(
        type(one)(1, one.model, fresh.optimizer_state), select
    )  # fmt: skip
    assert not torch.equal(other.model["fc1.weight"], straight.model["fc1.weight"])


def test_bad_input_is_one_line():
    cd = _made_clients()
    with pytest.raises(ValueError, match="epochs=None repeats the pooled data forever"):
        build_centralized(_Tiny, epochs=None)
    with pytest.raises(KeyError, match="not in the ClientData"):
        _process().next(_process().initialize(), ClientSelection(cd, ["zz"]))
    bad = ClientData.from_clients([("a", np.zeros((2, 4), np.float32), np.array([0, 7]))])
    with pytest.raises(ValueError, match="label 7 is outside the model's 3 classes"):
        _process().next(_process().initialize(), ClientSelection(bad, ["a"]))


# -- the stage in a run ---------------------------------------------------------------------------
RUN = [
    "--dataset", "synthetic", "--synthetic-clients", "10", "--num-train-clients", "6",
    "--num-p13n-clients", "4", "--num-eval-clients", "2", "--p13n-epochs", "1",
    "--strategy", "sgd", "--executor", "in-process", "--no-report", "--no-progress",
    "--checkpoint-every", "1",
]  # fmt: skip
STAGE = "rounds=2,local_steps=3,batch_size=10,client_learning_rate=0.05,client_momentum=0.9"
TOML = f"""
[[stages]]
name = "centralized"
{chr(10).join(f"{k} = {v}" for k, v in (kv.split("=") for kv in STAGE.split(",")))}
"""


@pytest.fixture(scope="module")
def by_hand():
    """The stage written out with the library: pooled examples of the 6 FedAvg clients."""
    train, _ = load_dataset("synthetic", num_clients=10, seed=0, progress=False)
    train_ids, _ = split_clients(list(train.client_ids), 6, 4, seed=42)
    process = build_centralized(
        model_fn_for("conv_dropout", 62),
        make_optimizer_fn("sgd", 0.05, momentum=0.9),
        epochs=10,  # the top-level local_epochs; local_steps=3 stops each round first
        batch_size=10,
        max_steps=3,
        seed=0,
    )
    state = process.initialize()
    for _ in range(2):
        state, _ = process.next(state, ClientSelection(train, train_ids))
    return state.model


def _weights(run_dir):
    return torch.load(run_dir / rd.GLOBAL_WEIGHTS, weights_only=True)


def _rows(run_dir):
    with open(run_dir / rd.FEDAVG_METRICS, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_stage_trains_centrally_and_personalizes(tmp_path, by_hand):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", *RUN, "--stage", f"centralized:{STAGE}",
                                   "--output-dir", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "stage 'centralized' is centralized: sgd lr 0.05 on the pooled" in res.output
    assert "clients_per_round, client_pipeline and the server settings do not apply" in res.output
    w = _weights(out)
    assert all(torch.equal(w[k], by_hand[k]) for k in by_hand)
    rows = _rows(out)
    assert [(r["round"], r["num_clients"], r["num_examples"]) for r in rows] == [
        ("1", "6", "30"),
        ("2", "6", "30"),
    ]  # all 6 FedAvg clients pooled, 3 batches of 10 per round
    assert (out / rd.SUMMARY).is_file() and (out / rd.PER_CLIENT).is_file()


def test_toml_stage_resumes_bit_identically(tmp_path, monkeypatch, by_hand):
    from fedp13n.algorithms import loop

    config = tmp_path / "central.toml"
    config.write_text(TOML)
    assert ExperimentConfig.from_toml(config).resolved_stages()[0].resolved_kind == "centralized"

    class CtrlCAtRound1(loop.LearningGuard):
        def on_round_end(self, process, state, row):
            if state.round_num == 1:
                raise KeyboardInterrupt

    out = tmp_path / "run"
    args = ["run", *RUN, "--config", str(config), "--output-dir", str(out)]
    monkeypatch.setattr(loop, "LearningGuard", CtrlCAtRound1)
    res = CliRunner().invoke(app, args)
    assert "interrupted after round 1 of 2" in res.output, res.output
    assert rd.checkpoint_path(out, 1).is_file() and not (out / rd.GLOBAL_WEIGHTS).exists()
    monkeypatch.undo()
    res = CliRunner().invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    assert "(round 1)" in res.output
    w = _weights(out)
    assert all(torch.equal(w[k], by_hand[k]) for k in by_hand)
    assert [r["round"] for r in _rows(out)] == ["1", "2"]


# -- configuration --------------------------------------------------------------------------------
def test_stage_kind_from_name_or_key_and_checks():
    top = ExperimentConfig()
    assert StageConfig.parse("centralized:rounds=2,local_epochs=1", top) == {
        "name": "centralized", "rounds": 2, "local_epochs": 1}  # fmt: skip
    stages = ExperimentConfig(
        stages=[{"name": "centralized"}, {"name": "pre", "kind": "centralized"}, {"name": "f"}]
    ).resolved_stages()
    assert [s.resolved_kind for s in stages] == ["centralized", "centralized", "fedavg"]
    with pytest.raises(ConfigError, match=r"stage 'x' kind 'central' is not one of") as e:
        ExperimentConfig(stages=[{"name": "x", "kind": "central"}]).validate()
    assert "\n" not in str(e.value)
    # clients_per_round does not apply to a centralized stage: not checked against the clients
    config = ExperimentConfig(stages=[{"name": "centralized", "clients_per_round": 50}])
    assert config.validate_against(10) == (7, 3)
    with pytest.raises(ConfigError, match="clients_per_round is 50 but there are only 7"):
        ExperimentConfig(stages=[{"name": "f", "clients_per_round": 50}]).validate_against(10)
