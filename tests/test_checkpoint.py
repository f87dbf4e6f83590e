"""Checkpoints: exact resume, safe loading, run-directory helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedp13n.algorithms import (
    ClientSelection,
    build_weighted_fed_avg,
    latest_checkpoint,
    load_checkpoint,
    sample_clients,
    save_checkpoint,
)
from fedp13n.data import ClientData
from fedp13n.rundir.layout import checkpoint_path

SEED = 9


class SmallNet(nn.Module):
    """Dropout, so that resuming must also reproduce the random streams."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


def client_data() -> ClientData:
    rng = np.random.default_rng(0)
    return ClientData.from_clients(
        (f"c{i}", rng.normal(size=(n, 6)).astype(np.float32), rng.integers(0, 3, n))
        for i, n in enumerate((5, 9, 3, 12, 7))
    )


def new_process():
    return build_weighted_fed_avg(
        SmallNet,
        lambda p: torch.optim.SGD(p, lr=0.05),
        lambda p: torch.optim.SGD(p, lr=1.0, momentum=0.9),
        batch_size=4,
        seed=SEED,
    )


def run_rounds(process, state, cd, rounds):
    for _ in range(rounds):
        r = state.round_num + 1
        ids = sample_clients(cd.client_ids, 3, seed=SEED, round_num=r)
        state, _ = process.next(state, ClientSelection(cd, ids))
    return state


def test_resume_from_checkpoint_gives_bit_identical_weights(tmp_path):
    cd = client_data()
    p = new_process()
    straight = run_rounds(p, p.initialize(), cd, 4)

    p1 = new_process()
    half = run_rounds(p1, p1.initialize(), cd, 2)
    path = save_checkpoint(checkpoint_path(tmp_path, half.round_num), half)
    assert path == tmp_path / "checkpoints" / "round_000002.pt"
    del p1, half
    p2 = new_process()  # as a fresh process would after a crash
    resumed_from = load_checkpoint(latest_checkpoint(tmp_path))
    assert resumed_from.round_num == 2
    assert resumed_from.optimizer_state["state"]  # the momentum buffers came back
    resumed = run_rounds(p2, resumed_from, cd, 2)

    assert resumed.round_num == straight.round_num == 4
    for name, value in straight.model.items():
        assert torch.equal(resumed.model[name], value), name
    for i, s in straight.optimizer_state["state"].items():
        assert torch.equal(
            resumed.optimizer_state["state"][i]["momentum_buffer"], s["momentum_buffer"]
        )


def test_round_trip_preserves_everything_and_leaves_no_temporary_file(tmp_path):
    p = new_process()
    state = run_rounds(p, p.initialize(), client_data(), 1)
    path = save_checkpoint(tmp_path / "ck.pt", state)
    loaded = load_checkpoint(path)
    assert list(loaded.model) == list(state.model)  # order kept: loads into model_fn()
    assert all(torch.equal(loaded.model[k], v) for k, v in state.model.items())
    assert loaded.optimizer_state["param_groups"] == state.optimizer_state["param_groups"]
    assert [f.name for f in tmp_path.iterdir()] == ["ck.pt"]
    SmallNet().load_state_dict(loaded.model)


_UNPICKLED = []


def _mark():
    _UNPICKLED.append(True)
    return "boom"


class Malicious:
    def __reduce__(self):
        return (_mark, ())


def test_loading_never_unpickles_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "fedp13n.fedavg.ServerState", "payload": Malicious()}, path)
    with pytest.raises(ValueError, match="not a readable fedp13n checkpoint"):
        load_checkpoint(path)
    assert _UNPICKLED == []


def test_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a fedp13n FedAvg checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    p = new_process()
    good = save_checkpoint(tmp_path / "good.pt", p.initialize())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(truncated)


def test_latest_checkpoint_is_the_highest_round(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    p = new_process()
    state = p.initialize()
    for r in (5, 15, 10):
        state.round_num = r
        save_checkpoint(checkpoint_path(tmp_path, r), state)
    (tmp_path / "checkpoints" / "notes.txt").write_text("not a checkpoint")
    assert latest_checkpoint(tmp_path).name == "round_000015.pt"
    assert load_checkpoint(latest_checkpoint(tmp_path)).round_num == 15
    assert not [f for f in (tmp_path / "checkpoints").iterdir() if ".tmp" in f.name]


def test_a_checkpoint_whose_contents_changed_is_refused_and_an_old_one_still_loads(tmp_path):
    p = new_process()
    state = run_rounds(p, p.initialize(), client_data(), 1)
    path = save_checkpoint(tmp_path / "ck.pt", state)
    payload = torch.load(path, weights_only=True)
    assert len(payload["sha256"]) == 64
    payload["model"]["fc1.weight"][0, 0] += 1e-6  # an edited weight, the old digest kept
    torch.save(payload, path)
    with pytest.raises(ValueError) as e:
        load_checkpoint(path)
    assert str(e.value) == (
        f"{path} fails its integrity check: its contents changed after fedp13n wrote it (a "
        "corrupted or edited file); delete it to resume from the checkpoint before it (or "
        "from round 0 if it is the only one)."
    )
    del payload["sha256"]  # as written before checkpoints carried a digest: loads unchecked
    torch.save(payload, path)
    assert torch.equal(load_checkpoint(path).model["fc1.weight"], payload["model"]["fc1.weight"])


def test_an_adam_server_state_given_to_an_sgd_process_is_one_line():
    adam = build_weighted_fed_avg(
        SmallNet, server_optimizer_fn=lambda p: torch.optim.Adam(p, lr=0.01), seed=SEED
    )
    cd = client_data()
    state = run_rounds(adam, adam.initialize(), cd, 1)
    with pytest.raises(ValueError) as e:
        run_rounds(new_process(), state, cd, 1)
    assert str(e.value) == (
        "the state's server optimizer state is from Adam but this process's server optimizer "
        "is SGD; resume with the server optimizer the run started with (or start from "
        "process.initialize())."
    )
