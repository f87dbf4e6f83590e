"""What a user meets on day one (issue 17): the example configs shipped inside the
package, the declared torch range and the tested pin, import and locking on any
platform, and a ``.lock`` that is a symlink."""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedp13n.cli.main import app
from fedp13n.experiments.config import ConfigError, ExperimentConfig
from fedp13n.experiments.examples import EXAMPLES_DIR, config_path, example_names
from fedp13n.experiments.sweep import SweepConfig
from fedp13n.rundir import lock
from fedp13n.rundir.lock import RunDirLocked, UnsafeLockFile, run_dir_lock
from fedp13n.rundir.readers import lock_holder

ROOT = Path(__file__).resolve().parents[1]
NAMES = [
    "centralized_sample", "demo", "fedavg_budget_sample", "femnist_sample", "pfedavg_sample",
    "shakespeare_sample", "table1_sample",
]  # fmt: skip
LISTED = ", ".join(NAMES)

TINY = [
    "--dataset", "synthetic", "--synthetic-clients", "10", "--num-train-clients", "6",
    "--num-p13n-clients", "4", "--rounds", "1", "--clients-per-round", "2",
    "--local-epochs", "1", "--num-eval-clients", "2", "--p13n-epochs", "1",
    "--executor", "in-process", "--no-report", "--no-progress",
]  # fmt: skip


def _error_line(res) -> str:
    """The single ``error:`` line of a refused command (exit code 2)."""
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


# -- the example configs ----------------------------------------------------------------------
def test_the_examples_are_shipped_in_the_package_and_nowhere_else():
    assert example_names() == NAMES
    assert EXAMPLES_DIR == ROOT / "src" / "fedp13n" / "examples"
    assert not list((ROOT / "bench").glob("*.toml")), "one copy only: the package's"
    # pyproject's package data takes every one of them into a wheel
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["fedp13n"]
    for name in NAMES:
        assert any(fnmatch.fnmatch(f"examples/{name}.toml", g) for g in globs), name


@pytest.mark.parametrize("name", NAMES)
def test_every_example_loads_and_validates(name):
    path = config_path(name)
    assert path == EXAMPLES_DIR / f"{name}.toml"
    if name == "table1_sample":
        sweep = SweepConfig.from_toml(path)
        assert sweep.grid == {"clients_per_round": [5, 20], "local_epochs": [2, 5, 10, 20]}
        sweep.base.validate()
    else:
        ExperimentConfig.from_toml(path).validate()
    text = path.read_text()
    assert "bench/" not in text.replace("bench/README.md", ""), "a stale path in its comments"
    if 'data_dir = "' in text:  # relative to the folder fedp13n runs in, as before
        sample = "shakespeare_sample" if name.startswith("shakespeare") else "femnist_sample"
        assert f'data_dir = "../shared/data/{sample}"' in text


def test_run_config_by_name_is_the_shipped_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file named demo here
    by_name = CliRunner().invoke(app, ["run", "--config", "demo", "--print-config"])
    by_path = CliRunner().invoke(
        app, ["run", "--config", str(EXAMPLES_DIR / "demo.toml"), "--print-config"]
    )
    assert by_name.exit_code == 0, by_name.output
    assert by_name.output == by_path.output
    assert "rounds = 25\n" in by_name.output and 'dataset = "synthetic"' in by_name.output


def test_a_file_or_path_given_is_never_replaced_by_an_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text("rounds = 7\n")  # a file named like an example wins
    assert config_path("demo") == Path("demo")
    res = CliRunner().invoke(app, ["run", "--config", "demo", "--print-config"])
    assert res.exit_code == 0 and "rounds = 7\n" in res.output, res.output
    for missing in ("./nothere", "nothere.toml", "sub/demo"):  # a path: no lookup
        assert config_path(missing) == Path(missing)
        res = CliRunner().invoke(app, ["run", "--config", missing, "--print-config"])
        assert _error_line(res) == f"error: config file {Path(missing)} does not exist."


def test_an_unknown_example_name_is_one_line_listing_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["run", "--config", "demoo"])
    assert _error_line(res) == (
        "error: --config 'demoo' is not a file, nor one of the shipped examples; give a TOML "
        f"file or an example name: {LISTED}."
    )
    res = CliRunner().invoke(app, ["sweep", "tabel1", "--output-dir", str(tmp_path / "out")])
    assert _error_line(res) == (
        "error: sweep file 'tabel1' is not a file, nor one of the shipped examples; give a "
        f"TOML file or an example name: {LISTED}."
    )
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="^--config 'x' is not a file"):
        config_path("x")
    res = CliRunner().invoke(app, ["run", "--config", " ", "--print-config"])
    assert (
        _error_line(res)
        == f"error: --config is empty; give a TOML file or an example name: {LISTED}."
    )


def test_sweep_takes_an_example_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # demo is a run, not a sweep: the message names the shipped file it read
    res = CliRunner().invoke(app, ["sweep", "demo", "--output-dir", str(tmp_path / "out")])
    assert _error_line(res).startswith(f"error: {EXAMPLES_DIR / 'demo.toml'}: a sweep needs")
    assert config_path("table1_sample", "sweep file") == EXAMPLES_DIR / "table1_sample.toml"


def test_examples_command_lists_and_prints_them():
    res = CliRunner().invoke(app, ["examples"])
    assert res.exit_code == 0, res.output
    listed = [line.split()[0] for line in res.output.splitlines()[: len(NAMES)]]
    assert listed == NAMES
    assert "fedp13n run --config demo" in res.output
    res = CliRunner().invoke(app, ["examples", "table1_sample"])
    assert res.exit_code == 0
    assert res.output == (EXAMPLES_DIR / "table1_sample.toml").read_text()
    res = CliRunner().invoke(app, ["examples", "nope"])
    assert _error_line(res) == f"error: no example named 'nope'; the shipped examples: {LISTED}."


def test_make_run_and_the_docs_use_the_shipped_examples():
    makefile = (ROOT / "Makefile").read_text()
    assert "fedp13n run --config demo\n" in makefile
    for doc in ("README.md", "bench/README.md", "Makefile"):
        text = (ROOT / doc).read_text()
        stale = re.findall(r"bench/\w+\.toml", text)
        assert not stale, (doc, stale)


# -- torch: a declared range, the tested version pinned where the project is set up -------------
def test_torch_is_a_range_in_pyproject_and_the_tested_pin_is_installed_first():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch_dep,) = [d for d in deps if re.match(r"torch\b", d)]
    assert torch_dep == "torch>=2.4,<3"
    makefile = (ROOT / "Makefile").read_text()
    assert "TORCH := torch==2.13.0\n" in makefile
    assert "TORCH_INDEX ?= https://download.pytorch.org/whl/cpu\n" in makefile
    recipe = makefile.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    assert recipe.index("'$(TORCH)'") < recipe.index("-e '.[dev,ray]'")


# -- platforms ---------------------------------------------------------------------------------
_NO_FCNTL = """
import os, sys
sys.modules["fcntl"] = None  # as on Windows: `import fcntl` fails
import importlib, pkgutil
import fedp13n
for m in pkgutil.walk_packages(fedp13n.__path__, "fedp13n."):
    importlib.import_module(m.name)
from fedp13n.rundir import lock
from fedp13n.rundir.readers import lock_holder
assert lock.fcntl is None
lock.msvcrt = None  # neither: runs are not locked, and work
with lock.run_dir_lock(sys.argv[1]) as path:
    assert path.read_text() == f"{os.getpid()}\\n"
    assert lock_holder(sys.argv[1]) is None
print("ok")
"""


def test_fedp13n_imports_and_locks_without_fcntl(tmp_path):
    res = subprocess.run(
        [sys.executable, "-c", _NO_FCNTL, str(tmp_path)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "ok\n"


class _FakeMsvcrt:
    """Windows' byte-range locks, as seen by one process: a range locked through one
    descriptor cannot be locked through another (Windows raises PermissionError)."""

    LK_UNLCK, LK_NBLCK = 0, 2

    def __init__(self):
        self.held: dict[tuple[int, int], int] = {}

    def locking(self, fd: int, mode: int, nbytes: int) -> None:
        key = (os.fstat(fd).st_ino, os.lseek(fd, 0, os.SEEK_CUR))
        if mode == self.LK_NBLCK:
            if key in self.held:
                raise PermissionError(13, "Permission denied")
            self.held[key] = fd
        else:
            assert self.held.pop(key) == fd


def test_the_windows_lock_refuses_a_second_run_and_leaves_the_pid_readable(tmp_path, monkeypatch):
    fake = _FakeMsvcrt()
    monkeypatch.setattr(lock, "fcntl", None)
    monkeypatch.setattr(lock, "msvcrt", fake)
    with run_dir_lock(tmp_path) as path:
        ino = path.stat().st_ino
        assert list(fake.held) == [(ino, lock._MSVCRT_LOCK_OFFSET)]  # past the pid
        with (
            pytest.raises(
                RunDirLocked, match=f"in use by another fedp13n run \\(pid {os.getpid()}\\)"
            ),
            run_dir_lock(tmp_path),
        ):
            pass
        path.write_text("4242\n")  # as if another process held it
        assert lock_holder(tmp_path) == "4242"
    assert fake.held == {}  # released on exit
    assert lock_holder(tmp_path) is None and fake.held == {}  # the probe released too


# -- a .lock that is not a plain file of its own -------------------------------------------------
def _refusal(lock_path: Path, what: str) -> str:
    return (
        f"{lock_path} is {what}, not fedp13n's lock file; it is left as it is: remove it (or "
        "choose another --output-dir) and rerun."
    )


def test_a_lock_symlink_is_refused_and_its_target_left_intact(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("precious content\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").symlink_to(target)
    with pytest.raises(UnsafeLockFile) as e, run_dir_lock(run_dir):
        pass
    assert str(e.value) == _refusal(run_dir / ".lock", "a symlink")
    assert target.read_text() == "precious content\n"
    assert lock_holder(run_dir) is None  # no run holds it

    dangling = tmp_path / "dangling"
    dangling.mkdir()
    (dangling / ".lock").symlink_to(tmp_path / "created-through-the-link")
    with pytest.raises(UnsafeLockFile, match="is a symlink"), run_dir_lock(dangling):
        pass
    assert not (tmp_path / "created-through-the-link").exists()


def test_a_lock_hard_link_directory_or_fifo_is_refused(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("precious content\n")
    hard = tmp_path / "hard"
    hard.mkdir()
    os.link(target, hard / ".lock")
    folder = tmp_path / "folder"
    (folder / ".lock").mkdir(parents=True)
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / ".lock")
    for run_dir, what in (
        (hard, "a hard link"),
        (folder, "a directory"),
        (fifo, "not a plain file"),
    ):
        with pytest.raises(UnsafeLockFile) as e, run_dir_lock(run_dir):
            pass
        assert str(e.value) == _refusal(run_dir / ".lock", what)
        assert lock_holder(run_dir) is None  # probed without blocking on the FIFO
    assert target.read_text() == "precious content\n"


def test_run_and_sweep_refuse_a_lock_symlink_in_one_line_writing_nothing(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("precious content\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").symlink_to(target)
    res = CliRunner().invoke(app, ["run", *TINY, "--output-dir", str(run_dir)])
    assert _error_line(res) == "error: " + _refusal(run_dir / ".lock", "a symlink")
    assert target.read_text() == "precious content\n"
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing written

    sweep_file = tmp_path / "sweep.toml"
    sweep_file.write_text('dataset = "synthetic"\n[sweep]\ngrid = { seed = [0, 1] }\n')
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / ".lock").symlink_to(target)
    res = CliRunner().invoke(app, ["sweep", str(sweep_file), "--output-dir", str(sweep_dir)])
    assert _error_line(res) == "error: " + _refusal(sweep_dir / ".lock", "a symlink")
    assert target.read_text() == "precious content\n"
    assert sorted(p.name for p in sweep_dir.iterdir()) == [".lock"]
