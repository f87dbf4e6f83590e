"""The client-state store: rows against a plain dict, commits and restores bit-identical,
kill -9 at every step of a commit, and state travelling with tasks to killed workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import torch

from fedp13n.algorithms.client_update import ClientTask
from fedp13n.client.result import ClientOutput
from fedp13n.execution import InProcessExecutor, LocalProcessExecutor
from fedp13n.state import ClientStateStore, state_spec
from fedp13n.state.store import GENERATIONS, INDEX

cloudpickle.register_pickle_by_value(sys.modules[__name__])

SRC = Path(__file__).resolve().parents[1] / "src"
SPEC = {"head.weight": ((3, 4), torch.float32), "count": ((), torch.int64)}
IDS = ["f0", "f1", 7, "f3", "f4"]


def _state(round_num: int, client: object) -> dict[str, torch.Tensor]:
    """A client's state after ``round_num``: distinct, hand-checkable values."""
    g = torch.Generator().manual_seed(1000 * round_num + sum(map(ord, str(client))))
    return {"head.weight": torch.randn(3, 4, generator=g), "count": torch.tensor(round_num)}


def _rounds() -> dict[int, list]:
    """Which clients write in which round (some twice, one never)."""
    return {1: ["f0", 7], 2: ["f1", 7], 3: [], 4: ["f0", "f3"], 5: ["f3", "f1", 7]}


def _reference(upto: int) -> dict[object, dict[str, torch.Tensor]]:
    """What the store must hold after round ``upto``: a plain dict, updated in a loop."""
    ref: dict[object, dict[str, torch.Tensor]] = {}
    for r, clients in _rounds().items():
        if r > upto:
            break
        for c in clients:
            ref[c] = _state(r, c)
    return ref


def _run(store: ClientStateStore, rounds: range) -> None:
    for r in rounds:
        for c in _rounds()[r]:
            store.put(c, _state(r, c))
        store.commit(r)


def _assert_holds(store: ClientStateStore, upto: int) -> None:
    ref = _reference(upto)
    for c in IDS:
        got = store.get(c)
        if c not in ref:
            assert got is None, c
            continue
        assert set(got) == set(SPEC)
        for name, t in ref[c].items():
            assert got[name].dtype == t.dtype and got[name].shape == t.shape
            assert got[name].numpy().tobytes() == t.numpy().tobytes(), (c, name)
    assert store.round_num == upto
    assert store.num_initialised == len(ref)


def test_rows_follow_a_plain_dict_and_pending_writes_are_visible(tmp_path):
    store = ClientStateStore.create(tmp_path / "cs", IDS, SPEC)
    assert store.get("f0") is None and not store.initialised("f0")
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    store.put("f0", {"head.weight": w, "count": torch.tensor(9)})
    assert store.initialised("f0") and store.num_initialised == 0  # pending, not committed
    got = store.get("f0")
    assert torch.equal(got["head.weight"], w) and int(got["count"]) == 9
    got["head.weight"][0, 0] = -1.0  # a copy: the store is unchanged
    assert store.get("f0")["head.weight"][0, 0] == 0.0
    store.restore(0)  # drops pending writes
    assert store.get("f0") is None
    _run(store, range(1, 6))
    _assert_holds(store, 5)
    _assert_holds(ClientStateStore.open(tmp_path / "cs"), 5)


def test_the_index_and_files_are_what_the_docstring_says(tmp_path):
    store = ClientStateStore.create(tmp_path / "cs", IDS, SPEC)
    _run(store, range(1, 3))
    index = json.loads((tmp_path / "cs" / INDEX).read_text())
    assert index["round"] == 2 and index["client_ids"] == IDS
    assert index["spec"] == {"head.weight": [[3, 4], "float32"], "count": [[], "int64"]}
    assert index["initialised"] == [0, 1, 2]  # f0, f1, 7
    # one file per state tensor, (num_clients, *shape): row 2 is client 7's round-2 head
    rows = np.fromfile(tmp_path / "cs" / "0.bin", dtype=np.float32).reshape(5, 3, 4)
    assert rows[2].tobytes() == _state(2, 7)["head.weight"].numpy().tobytes()
    assert not rows[3].any()  # never written: zeros
    assert (tmp_path / "cs" / "1.bin").stat().st_size == 5 * 8
    assert sorted(p.name for p in (tmp_path / "cs" / GENERATIONS).iterdir()) == [
        "round_000001.npz",
        "round_000002.npz",
    ]
    assert store.nbytes() == 5 * (12 * 4 + 8)


@pytest.mark.parametrize("target", [0, 1, 2, 3, 4])
def test_restore_goes_back_to_any_committed_round_bit_for_bit(tmp_path, target):
    store = ClientStateStore.create(tmp_path / "cs", IDS, SPEC)
    _run(store, range(1, 6))
    store.restore(target)
    _assert_holds(store, target)
    _run(store, range(target + 1, 6))  # redone from there: the same bytes as before
    _assert_holds(ClientStateStore.open(tmp_path / "cs"), 5)


def test_prune_limits_how_far_back_restore_goes(tmp_path):
    store = ClientStateStore.create(tmp_path / "cs", IDS, SPEC)
    _run(store, range(1, 6))
    assert [p.name for p in store.prune(3)] == [
        "round_000001.npz",
        "round_000002.npz",
        "round_000003.npz",
    ]
    store.restore(3)
    _assert_holds(store, 3)
    with pytest.raises(ValueError, match=r"at round 3 and cannot go back to round 2: round_000003"):
        store.restore(2)


def test_a_round_never_committed_is_refused(tmp_path):
    store = ClientStateStore.create(tmp_path / "cs", IDS, SPEC)
    store.put("f0", _state(2, "f0"))
    store.commit(2)
    store.put("f0", _state(5, "f0"))
    store.commit(5)
    with pytest.raises(ValueError, match=r"round 4 was never committed .*from 2 to 5"):
        store.restore(4)
    with pytest.raises(ValueError, match=r"commit\(5\): the store is at round 5"):
        store.commit(5)
    with pytest.raises(ValueError, match="at round 5, before round 6: that round was never"):
        store.restore(6)


def test_bad_input_gives_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="dtype torch.bfloat16 cannot be stored"):
        ClientStateStore.create(tmp_path / "a", IDS, {"w": ((2,), torch.bfloat16)})
    with pytest.raises(ValueError, match="shape must be a tuple of non-negative integers"):
        ClientStateStore.create(tmp_path / "a", IDS, {"w": ((2, -1), "float32")})
    with pytest.raises(ValueError, match="spec must be a non-empty mapping"):
        ClientStateStore.create(tmp_path / "a", IDS, {})
    with pytest.raises(ValueError, match="client id 'x' is given more than once"):
        ClientStateStore.create(tmp_path / "a", ["x", "y", "x"], SPEC)
    with pytest.raises(TypeError, match="must be a list of client ids"):
        ClientStateStore.create(tmp_path / "a", "xy", SPEC)
    store = ClientStateStore.create(tmp_path / "cs", IDS, SPEC)
    with pytest.raises(FileExistsError, match="already holds a client-state store; open it"):
        ClientStateStore.create(tmp_path / "cs", IDS, SPEC)
    with pytest.raises(KeyError, match="client 'zz' has no row"):
        store.get("zz")
    with pytest.raises(ValueError, match=r"must hold exactly \['count', 'head.weight'\]"):
        store.put("f0", {"head.weight": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match=r"'head.weight' must be float32 of shape \(3, 4\), got"):
        store.put("f0", {"head.weight": torch.zeros(3, 4, dtype=torch.float64), "count": 1})
    with pytest.raises(FileNotFoundError, match="no client-state store in"):
        ClientStateStore.open(tmp_path / "nothing")


def test_state_spec_reads_names_shapes_and_dtypes():
    head = torch.nn.Linear(4, 3)
    assert state_spec(dict(head.named_parameters())) == {
        "weight": ((3, 4), "float32"),
        "bias": ((3,), "float32"),
    }


# -- kill -9 at every step of a commit -------------------------------------------------------
_CRASHING_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    sys.path.insert(0, {src!r})
    sys.path.insert(0, {tests!r})
    from fedp13n.state import store as store_module
    from test_client_state import IDS, SPEC, _rounds, _state

    folder, where = sys.argv[1], sys.argv[2]
    st = store_module.ClientStateStore.create(folder, IDS, SPEC)
    calls = {{"n": 0, "round": 0}}

    def killing(original, after_calls):
        def wrapped(*args, **kwargs):
            if calls["round"] == 4:  # round 4's commit
                calls["n"] += 1
                if calls["n"] > after_calls:
                    os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        return wrapped

    cls = store_module.ClientStateStore
    if where == "before-rows":      # generation written, no row yet
        cls._write_rows = killing(cls._write_rows, 0)
    elif where == "between-files":  # the first file's rows written, not the second's
        cls._write_rows = killing(cls._write_rows, 1)
    elif where == "before-index":   # every row written, the index still at round 3
        cls._write_index = killing(cls._write_index, 0)
    for r in range(1, 6):
        calls["round"] = r
        for c in _rounds()[r]:
            st.put(c, _state(r, c))
        st.commit(r)
        if where == "after-commit" and r == 4:  # committed, its checkpoint never written
            os.kill(os.getpid(), signal.SIGKILL)
        open(os.path.join(folder, f"checkpoint_{{r}}"), "w").close()
    """
)


@pytest.mark.parametrize("where", ["before-rows", "between-files", "before-index", "after-commit"])
def test_kill_9_during_a_commit_then_resume_is_bit_identical(tmp_path, where):
    script = _CRASHING_RUN.format(src=str(SRC), tests=str(Path(__file__).parent))
    folder = tmp_path / "cs"
    proc = subprocess.run([sys.executable, "-c", script, str(folder), where], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    checkpoints = sorted(int(p.name.split("_")[1]) for p in folder.glob("checkpoint_*"))
    assert checkpoints == [1, 2, 3]
    store = ClientStateStore.open(folder)  # undoes a commit cut short
    store.restore(checkpoints[-1])  # --resume from the newest checkpoint
    _assert_holds(store, 3)
    _run(store, range(4, 6))
    _assert_holds(ClientStateStore.open(folder), 5)


def test_a_commit_cut_short_is_undone_on_open(tmp_path):
    """The same as a kill, in process: rows of round 2 written to the first file only."""
    store = ClientStateStore.create(tmp_path / "cs", IDS, SPEC)
    _run(store, range(1, 2))
    original = ClientStateStore._write_rows
    calls = []

    def fail_second(self, k, rows, values):
        calls.append(k)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, k, rows, values)

    store.put("f0", _state(2, "f0"))
    store.put(7, _state(2, 7))
    ClientStateStore._write_rows = fail_second
    try:
        with pytest.raises(KeyboardInterrupt):
            store.commit(2)
    finally:
        ClientStateStore._write_rows = original
    rows = np.fromfile(tmp_path / "cs" / "0.bin", dtype=np.float32).reshape(5, 3, 4)
    assert rows[0].tobytes() == _state(2, "f0")["head.weight"].numpy().tobytes()  # half done
    _assert_holds(ClientStateStore.open(tmp_path / "cs"), 1)


# -- state travels with the task ---------------------------------------------------------------
def _stateful_work(task: tuple[str, ClientTask]) -> ClientOutput:
    """A client's work that keeps state: a running sum of what it saw and a visit count;
    its worker is killed -9 the first time it runs client 'f1' (with the marker)."""
    marker, task = task
    if task.client_key == "f1" and marker and not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    old = task.state or {"sum": torch.zeros(2), "visits": torch.tensor(0)}
    seen = torch.tensor([task.round_num, len(str(task.client_key))], dtype=torch.float32)
    new = {"sum": old["sum"] * 0.5 + seen, "visits": old["visits"] + 1}
    return ClientOutput(None, None, 0, 0, 0.0, 0.0, True, state=new)


def _rounds_with(executor, folder: Path, marker: str) -> ClientStateStore:
    ids = ["f0", "f1", "f22"]
    store = ClientStateStore.create(
        folder, ids, {"sum": ((2,), "float32"), "visits": ((), "int64")}
    )
    for r, clients in ((1, ["f0", "f1"]), (2, ["f1", "f22"]), (3, ["f0", "f1", "f22"])):
        tasks = [(marker, ClientTask(None, None, c, r, store.get(c))) for c in clients]
        for c, out in zip(clients, executor.map(_stateful_work, tasks), strict=True):
            store.put(c, out.state)
        store.commit(r)
    return store


def test_state_travels_with_tasks_and_a_killed_workers_retried_task_loses_nothing(tmp_path):
    ref = _rounds_with(InProcessExecutor(), tmp_path / "ref", "")
    # by hand: f1 visits rounds 1, 2, 3: sum = ((0.5*[1,2] + [2,2]) * 0.5 + [3,2])
    f1 = ref.get("f1")
    assert f1["sum"].tolist() == [4.25, 3.5] and int(f1["visits"]) == 3
    marker = str(tmp_path / "killed-once")
    with LocalProcessExecutor(num_workers=1) as ex:
        got = _rounds_with(ex, tmp_path / "procs", marker)
    assert os.path.exists(marker)  # a worker was killed mid-task and its task retried
    for c in ("f0", "f1", "f22"):
        a, b = ref.get(c), got.get(c)
        assert all(a[n].numpy().tobytes() == b[n].numpy().tobytes() for n in a), c
