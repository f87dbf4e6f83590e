"""Loaders of federated EMNIST: TFF h5, LEAF JSON, TFF SQLite; on small files and the sample."""

from __future__ import annotations

import json
import sqlite3
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest

from fedp13n.data.client_data import UINT8_TO_UNIT, features_to_tensor
from fedp13n.data.h5 import load_h5_dir, load_h5_file, load_h5_pair
from fedp13n.data.leaf import load_leaf_dir, load_leaf_split
from fedp13n.data.sqlite import load_sqlite
from fedp13n.data.validate import LABEL_CHARS, DataFormatError, DataNotFoundError

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/data/femnist_sample"
needs_sample = pytest.mark.skipif(not SAMPLE.is_dir(), reason="femnist_sample not present")


def make_client(n: int, seed: int, num_classes: int = 62):
    """n images of exact k/255 float32 pixels and labels, reproducible from seed."""
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 256, size=(n, 28, 28))
    return UINT8_TO_UNIT[k], rng.integers(0, num_classes, size=n).astype(np.int32), k


def write_h5(path: Path, clients: dict) -> Path:
    with h5py.File(path, "w") as f:
        g = f.create_group("examples")
        for cid, (x, y) in clients.items():
            c = g.create_group(cid)
            c.create_dataset("pixels", data=x)
            c.create_dataset("label", data=y)
    return path


@pytest.fixture
def h5_dir(tmp_path):
    tr, te = {}, {}
    for i, cid in enumerate(["w2", "w0", "w1"]):
        x, y, _ = make_client(5 + i, seed=i)
        tr[cid] = (x, y)
        x, y, _ = make_client(2, seed=10 + i)
        te[cid] = (x, y)
    write_h5(tmp_path / "fed_emnist_train.h5", tr)
    write_h5(tmp_path / "fed_emnist_test.h5", te)
    return tmp_path, tr, te


# --- h5 -----------------------------------------------------------------------------------


def test_h5_loads_exact_uint8_in_sorted_order(h5_dir):
    d, tr, te = h5_dir
    train, test = load_h5_dir(d)
    assert train.client_ids == test.client_ids == ("w0", "w1", "w2")  # h5 key order
    assert train.x.dtype == np.uint8 and train.y.dtype == np.int16
    assert train.num_examples == 5 + 6 + 7 and test.num_examples == 6
    for cid in ("w0", "w1", "w2"):
        ds = train.create_dataset(cid)
        x, y = ds.tensors()
        # bit-for-bit the source floats, labels unchanged
        assert np.array_equal(x.numpy(), tr[cid][0])
        assert y.tolist() == tr[cid][1].tolist()
        assert np.array_equal(test.create_dataset(cid).x, np.rint(te[cid][0] * 255))


def test_h5_inexact_pixels_stay_float32_losslessly(tmp_path):
    x0, y0, _ = make_client(3, seed=0)
    x1, y1, _ = make_client(2, seed=1)
    x1 = x1.copy()
    x1[0, 0, 0] = 0.123  # not k/255
    cd = load_h5_file(write_h5(tmp_path / "a.h5", {"a": (x0, y0), "b": (x1, y1)}))
    assert cd.x.dtype == np.float32
    assert np.array_equal(cd.create_dataset("a").x, x0)
    assert np.array_equal(cd.create_dataset("b").x, x1)
    assert np.array_equal(features_to_tensor(cd.x).numpy(), np.concatenate([x0, x1]))


def _bad_h5(tmp_path, mutate) -> Path:
    path = tmp_path / "bad.h5"
    x, y, _ = make_client(4, seed=0)
    with h5py.File(path, "w") as f:
        c = f.create_group("examples").create_group("cl")
        mutate(c, x, y)
    return path


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda c, x, y: c.create_dataset("pixels", data=x), "missing dataset examples/cl/label"),
        (lambda c, x, y: c.create_dataset("label", data=y), "missing dataset examples/cl/pixels"),
        (
            lambda c, x, y: (
                c.create_dataset("pixels", data=x.reshape(4, 784)),
                c.create_dataset("label", data=y),
            ),
            r"shape \(4, 784\), expected \(n, 28, 28\)",
        ),
        (
            lambda c, x, y: (
                c.create_dataset("pixels", data=(x * 255).astype(np.int32)),
                c.create_dataset("label", data=y),
            ),
            "dtype int32",
        ),
        (
            lambda c, x, y: (
                c.create_dataset("pixels", data=x),
                c.create_dataset("label", data=y.astype(np.float32)),
            ),
            "labels have dtype float32",
        ),
        (
            lambda c, x, y: (
                c.create_dataset("pixels", data=x),
                c.create_dataset("label", data=np.array([0, 1, 62, 3], np.int32)),
            ),
            r"label 62 is outside 0..61",
        ),
        (
            lambda c, x, y: (
                c.create_dataset("pixels", data=x),
                c.create_dataset("label", data=np.array([0, -1, 2, 3], np.int32)),
            ),
            r"label -1 is outside",
        ),
        (
            lambda c, x, y: (
                c.create_dataset("pixels", data=x[:0]),
                c.create_dataset("label", data=y[:0]),
            ),
            "has no examples",
        ),
        (
            lambda c, x, y: (
                c.create_dataset("pixels", data=x),
                c.create_dataset("label", data=y[:3]),
            ),
            "4 images but 3 labels",
        ),
        (
            lambda c, x, y: (
                c.create_dataset("pixels", data=x * 2),
                c.create_dataset("label", data=y),
            ),
            r"outside \[0, 1\]",
        ),
    ],
)
def test_h5_bad_client_errors_name_file_and_client(tmp_path, mutate, match):
    path = _bad_h5(tmp_path, mutate)
    with pytest.raises(DataFormatError, match=match) as e:
        load_h5_file(path)
    assert str(path) in str(e.value) and "'cl'" in str(e.value)


def test_h5_missing_group_and_not_hdf5(tmp_path):
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f.create_group("other")
    with pytest.raises(DataFormatError, match="no 'examples' group"):
        load_h5_file(tmp_path / "g.h5")
    (tmp_path / "t.h5").write_text("not hdf5")
    with pytest.raises(DataFormatError, match="not a readable HDF5"):
        load_h5_file(tmp_path / "t.h5")
    with pytest.raises(DataNotFoundError, match="fed_emnist_train.h5"):
        load_h5_dir(tmp_path)


def test_h5_client_missing_from_test_is_an_error(tmp_path):
    a, b = make_client(3, 0)[:2], make_client(2, 1)[:2]
    tr = write_h5(tmp_path / "tr.h5", {"a": a, "b": b})
    te = write_h5(tmp_path / "te.h5", {"a": a})
    with pytest.raises(DataFormatError, match=r"1 only in train \(e.g. \['b'\]\)"):
        load_h5_pair(tr, te)


@needs_sample
def test_h5_real_sample():
    train, test = load_h5_dir(SAMPLE)
    ids = (SAMPLE / "clients.txt").read_text().split()
    assert len(train) == 286 and sorted(train.client_ids) == sorted(ids)
    assert train.client_ids == test.client_ids
    assert (train.num_examples, test.num_examples) == (39_452, 4_519)
    assert train.x.dtype == np.uint8  # real pixels are exactly k/255
    assert set(np.unique(train.y).tolist()) == set(range(62))
    cid = train.client_ids[7]
    with h5py.File(SAMPLE / "fed_emnist_train.h5") as f:
        raw_x = f["examples"][cid]["pixels"][()]
        raw_y = f["examples"][cid]["label"][()]
    x, y = train.create_dataset(cid).tensors()
    assert np.array_equal(x.numpy(), raw_x) and np.array_equal(y.numpy(), raw_y)
    assert np.all(test.client_sizes() >= 1)


# --- LEAF -----------------------------------------------------------------------------------


def write_leaf(path: Path, clients: dict, num_samples=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    users = list(clients)
    data = {
        "users": users,
        "num_samples": num_samples or [len(clients[u][1]) for u in users],
        "user_data": {
            u: {"x": np.asarray(x).reshape(len(x), -1).tolist(), "y": np.asarray(y).tolist()}
            for u, (x, y) in clients.items()
        },
    }
    path.write_text(json.dumps(data))
    return path


def test_leaf_loads_shards_in_order(tmp_path):
    a, b, c = make_client(3, 0), make_client(4, 1), make_client(2, 2)
    # float64 k/255 in JSON, as LEAF writes it
    as64 = {k: (v[2] / 255.0, v[1]) for k, v in {"u1": a, "u0": b, "u2": c}.items()}
    write_leaf(tmp_path / "train/s0.json", {"u1": as64["u1"], "u0": as64["u0"]})
    write_leaf(tmp_path / "train/s1.json", {"u2": as64["u2"]})
    write_leaf(tmp_path / "test/s0.json", {"u0": as64["u0"], "u1": as64["u1"]})
    write_leaf(tmp_path / "test/s1.json", {"u2": as64["u2"]})
    train, test = load_leaf_dir(tmp_path)
    assert train.client_ids == test.client_ids == ("u1", "u0", "u2")
    assert train.x.dtype == np.uint8
    assert np.array_equal(train.create_dataset("u0").x, b[2])
    assert train.create_dataset("u2").y.tolist() == c[1].tolist()


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d["user_data"].pop("u0"), "no entry in 'user_data'"),
        (lambda d: d.__setitem__("num_samples", [9]), "num_samples says 9"),
        (lambda d: d["user_data"]["u0"].__setitem__("x", [[0.5] * 783]), r"expected \(n, 784\)"),
        (lambda d: d["user_data"]["u0"].__setitem__("y", [70]), "label 70 is outside"),
        (lambda d: d.pop("users"), "missing key 'users'"),
    ],
)
def test_leaf_bad_shard(tmp_path, edit, match):
    path = write_leaf(tmp_path / "train/s.json", {"u0": (np.ones((1, 28, 28)), [3])})
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match=match) as e:
        load_leaf_split(tmp_path / "train")
    assert str(path) in str(e.value)


def test_leaf_duplicate_client_across_shards(tmp_path):
    one = {"u0": (np.ones((1, 28, 28)), [3])}
    write_leaf(tmp_path / "train/a.json", one)
    write_leaf(tmp_path / "train/b.json", one)
    with pytest.raises(DataFormatError, match="duplicate client id 'u0'.*a.json.*b.json"):
        load_leaf_split(tmp_path / "train")


def test_leaf_missing_test_dir(tmp_path):
    write_leaf(tmp_path / "train/a.json", {"u0": (np.ones((1, 28, 28)), [3])})
    with pytest.raises(DataNotFoundError, match="test: not a directory"):
        load_leaf_dir(tmp_path)


@needs_sample
def test_leaf_real_sample_matches_h5_sample():
    train, test = load_leaf_dir(SAMPLE / "leaf")
    assert len(train) == 5 and (train.num_examples, test.num_examples) == (779, 89)
    h5_train, h5_test = load_h5_dir(SAMPLE)
    # the same writers, split the same way: identical pixels and labels from both formats
    for cid in train.client_ids:
        for a, b in ((train, h5_train), (test, h5_test)):
            da, db = a.create_dataset(cid), b.create_dataset(cid)
            assert np.array_equal(da.x, db.x) and np.array_equal(da.y, db.y)


# --- SQLite (tf.train.Example rows) ---------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def encode_example(pixels: np.ndarray, label: int) -> bytes:
    flat = np.asarray(pixels, np.float32).ravel()
    feats = {
        "pixels": _len(2, _len(1, struct.pack(f"<{flat.size}f", *flat.tolist()))),
        "label": _len(3, _len(1, _varint(label))),
    }
    return _len(1, b"".join(_len(1, _len(1, k.encode()) + _len(2, v)) for k, v in feats.items()))


def write_sqlite(path: Path, rows, *, tables=("examples", "client_metadata")) -> Path:
    con = sqlite3.connect(path)
    if "examples" in tables:
        con.execute(
            "CREATE TABLE examples (split_name TEXT, client_id TEXT, serialized_example_proto BLOB)"
        )
    if "client_metadata" in tables:
        con.execute(
            "CREATE TABLE client_metadata (client_id TEXT, split_name TEXT, num_examples INTEGER)"
        )
    if "examples" in tables:
        con.executemany("INSERT INTO examples VALUES (?, ?, ?)", rows)
    con.commit()
    con.close()
    return path


@pytest.fixture
def sqlite_rows():
    rows, expected = [], {}
    for split in ("all_train", "all_test", "digits_only_train", "digits_only_test"):
        for cid, n in (("c_b", 3), ("c_a", 2)):
            x, y, _ = make_client(n, seed=len(expected), num_classes=10)
            expected[split, cid] = (x, y)
            rows += [(split, cid, encode_example(x[i], int(y[i]))) for i in range(n)]
    return rows, expected


@pytest.mark.parametrize("only_digits", [False, True])
def test_sqlite_loads_both_variants(tmp_path, sqlite_rows, only_digits):
    rows, expected = sqlite_rows
    db = write_sqlite(tmp_path / "emnist_all.sqlite", rows[::-1])  # row order irrelevant
    train, test = load_sqlite(db, only_digits=only_digits)
    prefix = "digits_only" if only_digits else "all"
    assert train.client_ids == test.client_ids == ("c_a", "c_b")
    assert train.x.dtype == np.uint8
    for split, cd in ((f"{prefix}_train", train), (f"{prefix}_test", test)):
        for cid in ("c_a", "c_b"):
            x, y = cd.create_dataset(cid).tensors()
            ex, ey = expected[split, cid]
            # rows were inserted reversed; within a client they come back in rowid order
            assert np.array_equal(x.numpy(), ex[::-1]) and y.tolist() == ey[::-1].tolist()


def test_sqlite_bad_files(tmp_path, sqlite_rows):
    rows, _ = sqlite_rows
    db = write_sqlite(tmp_path / "m.sqlite", rows, tables=("examples",))
    with pytest.raises(DataFormatError, match="missing table.*client_metadata"):
        load_sqlite(db)
    (tmp_path / "junk.sqlite").write_bytes(b"x" * 200)
    with pytest.raises(DataFormatError, match="not a SQLite database"):
        load_sqlite(tmp_path / "junk.sqlite")
    db = write_sqlite(tmp_path / "e.sqlite", [r for r in rows if r[0].startswith("digits")])
    with pytest.raises(DataFormatError, match="no examples with split_name 'all_train'"):
        load_sqlite(db)
    con = sqlite3.connect(tmp_path / "c.sqlite")
    con.execute("CREATE TABLE examples (split_name TEXT, client_id TEXT)")
    con.execute("CREATE TABLE client_metadata (client_id TEXT)")
    con.close()
    with pytest.raises(DataFormatError, match="lacks column.*serialized_example_proto"):
        load_sqlite(tmp_path / "c.sqlite")


@pytest.mark.parametrize(
    "blob, match",
    [
        (b"\x0a\x05abc", "not a valid tf.train.Example"),
        (encode_example(np.zeros(783), 1), "has 783 values"),
        (encode_example(np.zeros(784), 62), "label 62 is outside"),
        (_len(1, b""), "no float feature 'pixels'"),
    ],
)
def test_sqlite_bad_rows_name_the_client(tmp_path, sqlite_rows, blob, match):
    rows, _ = sqlite_rows
    db = write_sqlite(tmp_path / "b.sqlite", [*rows, ("all_train", "c_bad", blob)])
    with pytest.raises(DataFormatError, match=match) as e:
        load_sqlite(db)
    assert "'c_bad'" in str(e.value) and "all_train" in str(e.value)


def test_label_chars():
    assert [LABEL_CHARS[i] for i in (0, 9, 10, 11, 35, 36, 37, 61)] == list("09ABZabz")
