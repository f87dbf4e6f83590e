"""load_dataset, the local cache, summary statistics and the ``fedp13n data`` CLI."""

from __future__ import annotations

import lzma
import os
from pathlib import Path

import numpy as np
import pytest
from test_data_loaders import (
    SAMPLE,
    encode_example,
    make_client,
    needs_sample,
    write_h5,
    write_sqlite,
)
from typer.testing import CliRunner

import fedp13n.data.datasets as datasets
from fedp13n.cli.data_cmd import app
from fedp13n.data.cache import CACHE_ENV, default_cache_dir, load_cached
from fedp13n.data.client_data import ClientData
from fedp13n.data.datasets import load_dataset
from fedp13n.data.stats import summarize
from fedp13n.data.validate import DataError


@pytest.fixture
def h5_dir(tmp_path):
    """Ten writers w0..w9 with 3+i train and 1+i%2 test examples."""
    d = tmp_path / "h5"
    d.mkdir()
    tr = {f"w{i}": make_client(3 + i, seed=i)[:2] for i in range(10)}
    te = {f"w{i}": make_client(1 + i % 2, seed=100 + i)[:2] for i in range(10)}
    write_h5(d / "fed_emnist_train.h5", tr)
    write_h5(d / "fed_emnist_test.h5", te)
    return d, tr, te


def test_unknown_name_lists_valid_names(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'femnist'.*emnist, emnist-sqlite, leaf"):
        load_dataset("femnist", cache_dir=tmp_path)


def test_emnist_data_dir_is_converted_once_then_cached(h5_dir, tmp_path, monkeypatch):
    d, tr, _ = h5_dir
    cache = tmp_path / "cache"
    train, test = load_dataset("emnist", data_dir=d, cache_dir=cache)
    assert train.client_ids == test.client_ids and len(train) == 10
    assert train.num_examples == sum(3 + i for i in range(10))
    assert train.path is not None and train.path.parent.parent == cache

    def boom(*a, **k):
        raise AssertionError("the h5 files were parsed again instead of using the cache")

    monkeypatch.setattr(datasets, "load_h5_dir", boom)
    again, _ = load_dataset("emnist", data_dir=d, cache_dir=cache, mmap=True)
    assert isinstance(again.x, np.memmap)
    assert np.array_equal(again.x, train.x) and np.array_equal(again.y, train.y)
    # a changed source file gets a new cache key, hence a fresh conversion
    os.utime(d / "fed_emnist_test.h5", ns=(1, 1))
    with pytest.raises(AssertionError, match="parsed again"):
        load_dataset("emnist", data_dir=d, cache_dir=cache)


def test_damaged_cache_entry_is_rebuilt(h5_dir, tmp_path):
    d, _, _ = h5_dir
    cache = tmp_path / "cache"
    train, _ = load_dataset("emnist", data_dir=d, cache_dir=cache)
    (train.path / "meta.json").unlink()
    assert load_cached(cache, train.path.parent.name) is None
    rebuilt, _ = load_dataset("emnist", data_dir=d, cache_dir=cache)
    assert rebuilt.num_examples == train.num_examples


def test_num_clients_is_a_seeded_subset(h5_dir, tmp_path):
    d, tr, te = h5_dir
    full, _ = load_dataset("emnist", data_dir=d, cache_dir=tmp_path)
    a_tr, a_te = load_dataset("emnist", data_dir=d, cache_dir=tmp_path, num_clients=4, seed=3)
    b_tr, _ = load_dataset("emnist", data_dir=d, cache_dir=tmp_path, num_clients=4, seed=3)
    assert a_tr.client_ids == a_te.client_ids == b_tr.client_ids and len(a_tr) == 4
    positions = [full.client_ids.index(c) for c in a_tr.client_ids]
    assert positions == sorted(positions)  # dataset order kept
    draws = {
        load_dataset("emnist", data_dir=d, cache_dir=tmp_path, num_clients=4, seed=s)[0].client_ids
        for s in range(6)
    }
    assert len(draws) > 1  # the seed matters
    for c in a_tr.client_ids:
        assert np.array_equal(a_te.create_dataset(c).x, np.rint(te[c][0] * 255))
    with pytest.raises(DataError, match="num_clients=11.*10 clients"):
        load_dataset("emnist", data_dir=d, cache_dir=tmp_path, num_clients=11)


def test_missing_files_and_leaf_options(tmp_path):
    with pytest.raises(DataError, match="fed_emnist_train.h5"):
        load_dataset("emnist", data_dir=tmp_path, cache_dir=tmp_path)
    with pytest.raises(DataError, match="needs --data-dir"):
        load_dataset("leaf", cache_dir=tmp_path)
    with pytest.raises(DataError, match="not available for 'leaf'"):
        load_dataset("leaf", data_dir=tmp_path, cache_dir=tmp_path, only_digits=True)
    with pytest.raises(DataError, match="train: not a directory"):
        load_dataset("leaf", data_dir=tmp_path, cache_dir=tmp_path)
    with pytest.raises(DataError, match="emnist_all.sqlite"):
        load_dataset("emnist-sqlite", data_dir=tmp_path, cache_dir=tmp_path)


def test_sqlite_lzma_from_data_dir(tmp_path):
    rows = []
    for split, cid, n in (("digits_only_train", "z", 2), ("digits_only_test", "z", 1)):
        x, y, _ = make_client(n, seed=n, num_classes=10)
        rows += [(split, cid, encode_example(x[i], int(y[i]))) for i in range(n)]
    db = write_sqlite(tmp_path / "db.sqlite", rows)
    d = tmp_path / "d"
    d.mkdir()
    (d / "emnist_all.sqlite.lzma").write_bytes(lzma.compress(db.read_bytes()))
    train, test = load_dataset(
        "emnist-sqlite", data_dir=d, cache_dir=tmp_path / "c", only_digits=True
    )
    assert (train.client_ids, train.num_examples, test.num_examples) == (("z",), 2, 1)


@needs_sample
def test_leaf_sample_through_load_dataset(tmp_path):
    train, test = load_dataset("leaf", data_dir=SAMPLE / "leaf", cache_dir=tmp_path)
    assert (len(train), train.num_examples, test.num_examples) == (5, 779, 89)


def test_synthetic_dispatch():
    train, test = load_dataset("synthetic", num_clients=3, seed=1)
    assert len(train) == 3 and train.client_ids == test.client_ids


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv(CACHE_ENV)
    assert default_cache_dir() == Path.home() / ".cache" / "fedp13n"


def test_summary_matches_plain_loops():
    rng = np.random.default_rng(0)
    sizes = [5, 1, 8, 3]
    clients = [
        (f"c{i}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 62, n))
        for i, n in enumerate(sizes)
    ]
    train = ClientData.from_clients(clients)
    test = ClientData.from_clients([(c, x[:1], y[:1]) for c, x, y in clients])
    s = summarize(train, test)
    assert (s.num_clients, s.train_examples, s.test_examples) == (4, 17, 4)
    # sorted sizes 1 3 5 8: min 1, median (3+5)/2, max 8; p25 = 1 + 0.75*(3-1) = 2.5
    q = dict(zip((0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0), s.train_size_quantiles, strict=True))
    assert (q[0.0], q[0.25], q[0.5], q[1.0]) == (1.0, 2.5, 4.0, 8.0)
    expected = [0] * 62
    for _, _, y in clients:
        for label in y:
            expected[label] += 1
    assert s.train_class_counts.tolist() == expected
    assert s.test_class_counts.sum() == 4 and s.train_mean_size == 17 / 4


def test_cli_info_and_download(h5_dir, tmp_path):
    d, tr, _ = h5_dir
    runner = CliRunner()
    args = ["--dataset", "emnist", "--data-dir", str(d), "--cache-dir", str(tmp_path / "c")]
    res = runner.invoke(app, ["download", *args])
    assert res.exit_code == 0, res.output
    assert "10 clients, 75 train and 15 test examples" in res.output
    res = runner.invoke(app, ["info", *args])
    assert res.exit_code == 0, res.output
    assert "clients" in res.output and "75" in res.output
    counts = np.bincount(np.concatenate([y for _, y in tr.values()]), minlength=62)
    # the row of label 37 ('b') shows its train count
    row = next(line for line in res.output.splitlines() if "│    37 │" in line)
    assert "│    b │" in row and f"│ {counts[37]:>5,} │" in row


def test_cli_user_errors_exit_2_without_traceback(tmp_path):
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["info", "--dataset", "emnist", "--data-dir", str(tmp_path), "--cache-dir", str(tmp_path)],
    )
    assert res.exit_code == 2
    assert "error: missing" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["info", "--dataset", "nope"])
    assert res.exit_code == 2 and "valid names" in res.output
