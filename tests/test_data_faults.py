"""Bad input and faults in the data layer: nothing lost, nothing silently wrong, no hangs.

Every fixture is made here: small h5/JSON/SQLite files, a hostile HTTP server on
127.0.0.1, a full disk (a size-limited tmpfs when mountable, else a simulated ENOSPC).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from test_data_download import (
    COUNTS,
    _downloads,
    _emnist_archive,
    _entries,
    _Handler,
    _leftovers,
    _tar,
)
from test_data_loaders import encode_example, make_client, write_h5, write_leaf, write_sqlite
from typer.testing import CliRunner

import fedp13n.data.client_data as client_data_mod
import fedp13n.data.datasets as datasets
import fedp13n.data.download as download
import fedp13n.data.resources as resources
from fedp13n.cli.main import app
from fedp13n.data.cache import CacheRebuiltWarning, load_cached
from fedp13n.data.client_data import UINT8_TO_UNIT, ClientData, ClientDataset
from fedp13n.data.datasets import fetch_emnist_h5, fetch_emnist_sqlite, load_dataset
from fedp13n.data.download import DownloadError, download_file
from fedp13n.data.h5 import load_h5_file
from fedp13n.data.leaf import load_leaf_split
from fedp13n.data.resources import StorageError
from fedp13n.data.sqlite import load_sqlite
from fedp13n.data.synthetic import make_synthetic_emnist
from fedp13n.data.tf_example import ProtoDecodeError, parse_example
from fedp13n.data.validate import (
    CacheCorruptError,
    CacheStaleError,
    DataError,
    DataFormatError,
    DataNotFoundError,
    check_client,
)

runner = CliRunner()
is_root = hasattr(os, "geteuid") and os.geteuid() == 0


def assert_cli_error(args, *fragments: str) -> str:
    """``fedp13n data ...`` fails with exit 2 and one ``error:`` line naming ``fragments``."""
    res = runner.invoke(app, ["data", *args])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    for f in fragments:
        assert f in errors[0], errors[0]
    return errors[0]


def _h5_dir(tmp_path: Path, n_clients: int = 3) -> Path:
    d = tmp_path / "h5"
    d.mkdir(exist_ok=True)
    write_h5(d / "fed_emnist_train.h5", {f"w{i}": make_client(3, i)[:2] for i in range(n_clients)})
    write_h5(
        d / "fed_emnist_test.h5", {f"w{i}": make_client(1, 9 + i)[:2] for i in range(n_clients)}
    )
    return d


@pytest.fixture
def server():
    """Serve ``files`` (path -> bytes) on 127.0.0.1, as in test_data_download."""
    files: dict[str, bytes] = {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_Handler,), {"files": files}))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# --- disk full during extraction: reported as such, archive kept, nothing left ----------------


def test_disk_full_during_extraction_keeps_the_archive(server, tmp_path, monkeypatch):
    url, files = server
    archive = _emnist_archive()
    files["/fed_emnist.tar.bz2"] = archive
    root = tmp_path / "cache"
    real_copy = tarfile.copyfileobj

    def fill_up(src, dst, length=None, *a, **k):  # writes some bytes, then the disk is full
        dst.write(src.read(min(length or 0, 100)))
        _enospc()

    monkeypatch.setattr(tarfile, "copyfileobj", fill_up)
    with pytest.raises(StorageError, match="the disk is full.*archive is fine and was kept"):
        fetch_emnist_h5(
            root, url=url + "/fed_emnist.tar.bz2", expected_counts=COUNTS, progress=False
        )
    assert [p.read_bytes() for p in _downloads(root)] == [archive]  # nothing finished lost
    assert _entries(root) == [] and _leftovers(root) == []  # nothing partial left
    assert not list(root.rglob("*.h5"))
    # space freed: the kept archive is used, no new download
    monkeypatch.setattr(tarfile, "copyfileobj", real_copy)
    files.clear()
    train, _ = fetch_emnist_h5(
        root, url=url + "/fed_emnist.tar.bz2", expected_counts=COUNTS, progress=False
    )
    assert len(train) == COUNTS[0]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs (root with mount privileges only; skipped elsewhere)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
        capture_output=True,
        timeout=20,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=20)


def test_disk_full_on_a_real_small_filesystem(server, tmp_path, small_tmpfs):
    url, files = server
    ones = np.ones((80, 28, 28), np.float32)  # compresses to almost nothing, 250 KB extracted
    clients = {"a": (ones, np.zeros(80, np.int32)), "b": (ones, np.ones(80, np.int32))}
    write_h5(tmp_path / "tr.h5", clients)
    write_h5(tmp_path / "te.h5", clients)
    archive = _tar(
        {
            "fed_emnist_train.h5": (tmp_path / "tr.h5").read_bytes(),
            "fed_emnist_test.h5": (tmp_path / "te.h5").read_bytes(),
        }
    )
    assert len(archive) < 64 << 10
    files["/a.tar.bz2"] = archive
    root = small_tmpfs / "cache"
    with pytest.raises(StorageError, match="disk is full.*kept"):
        fetch_emnist_h5(root, url=url + "/a.tar.bz2", expected_counts=None, progress=False)
    assert [p.read_bytes() for p in _downloads(root)] == [archive]
    assert _entries(root) == [] and _leftovers(root) == []


def test_disk_full_while_downloading(server, tmp_path, monkeypatch):
    url, files = server
    files["/blob"] = b"x" * 100_000
    real_open = open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(download, "open", lambda p, m: Full(real_open(p, m)), raising=False)
    with pytest.raises(StorageError, match=r"cannot write the download .*blob\.part: the disk"):
        download_file(url + "/blob", tmp_path / "d" / "blob", progress=False)
    assert list((tmp_path / "d").iterdir()) == []


def test_disk_full_while_writing_the_cache(tmp_path, monkeypatch):
    d = _h5_dir(tmp_path)
    cache = tmp_path / "cache"
    monkeypatch.setattr(client_data_mod.np, "save", _enospc)
    with pytest.raises(StorageError, match="cannot write the cache entry .*the disk is full"):
        load_dataset("emnist", data_dir=d, cache_dir=cache)
    assert _entries(cache) == [] and list(cache.iterdir()) == []  # no partial entry
    monkeypatch.undo()
    train, _ = load_dataset("emnist", data_dir=d, cache_dir=cache)
    assert len(train) == 3


def test_cache_dir_under_a_regular_file(tmp_path):
    d = _h5_dir(tmp_path)
    (tmp_path / "file").write_text("not a directory")
    cache = tmp_path / "file" / "cache"
    with pytest.raises(StorageError, match="file is a regular file, not a directory"):
        load_dataset("emnist", data_dir=d, cache_dir=cache)
    assert_cli_error(
        ["info", "--data-dir", str(d), "--cache-dir", str(cache)],
        "cannot write the cache entry",
        "is a regular file, not a directory",
        "--cache-dir",
    )


@pytest.mark.skipif(is_root, reason="root writes into a 0o500 directory anyway")
def test_unwritable_cache_dir(tmp_path):
    d = _h5_dir(tmp_path)
    cache = tmp_path / "ro"
    cache.mkdir()
    cache.chmod(0o500)
    try:
        assert_cli_error(
            ["download", "--data-dir", str(d), "--cache-dir", str(cache)], "permission denied"
        )
    finally:
        cache.chmod(0o700)


# --- SQLite paths with %, # and ? ------------------------------------------------------------


def _sqlite_with(path: Path, cid: str) -> Path:
    rows = []
    for split in ("all_train", "all_test"):
        x, y, _ = make_client(2, seed=len(cid))
        rows += [(split, cid, encode_example(x[i], int(y[i]))) for i in range(2)]
    return write_sqlite(path, rows)


@pytest.mark.parametrize("name", ["a%41.sqlite", "a#b.sqlite", "a?b.sqlite", "a b%20.sqlite"])
def test_sqlite_path_with_uri_characters(tmp_path, name):
    _sqlite_with(tmp_path / name, "right")
    _sqlite_with(tmp_path / "aA.sqlite", "wrong")  # what an unescaped %41 would open
    _sqlite_with(tmp_path / "a b .sqlite", "wrong")
    train, _ = load_sqlite(tmp_path / name)
    assert train.client_ids == ("right",)


# --- a custom --url never poisons TFF's pinned cache entry --------------------------------------


def test_custom_url_is_cached_under_its_own_key(server, tmp_path, monkeypatch):
    url, files = server
    files["/mine.tar.bz2"] = _emnist_archive()
    root = tmp_path / "cache"
    custom, _ = fetch_emnist_h5(
        root, url=url + "/mine.tar.bz2", expected_counts=COUNTS, progress=False
    )
    assert custom.path.parent.name.startswith("emnist-62-url-")
    tried = []

    def fake_download(u, target, **kw):
        tried.append((u, kw.get("sha256")))
        raise DownloadError("offline")

    monkeypatch.setattr(datasets, "download_file", fake_download)
    with pytest.raises(DownloadError, match="offline"):
        fetch_emnist_h5(root, progress=False)  # the default: TFF's data, not the custom one
    assert tried == [(datasets.EMNIST_H5[False].url, datasets.EMNIST_H5[False].sha256)]
    # another custom URL is yet another key
    files["/other.tar.bz2"] = files["/mine.tar.bz2"]
    monkeypatch.undo()
    other, _ = fetch_emnist_h5(
        root, url=url + "/other.tar.bz2", expected_counts=COUNTS, progress=False
    )
    assert other.path.parent != custom.path.parent
    assert len(_downloads(root)) == 2


def test_custom_sqlite_url_is_cached_under_its_own_key(server, tmp_path, monkeypatch):
    import lzma

    db = _sqlite_with(tmp_path / "db.sqlite", "mine")
    url, files = server
    files["/db.lzma"] = lzma.compress(db.read_bytes())
    root = tmp_path / "cache"
    custom, _ = fetch_emnist_sqlite(
        root, url=url + "/db.lzma", expected_counts=None, progress=False
    )
    assert custom.path.parent.name.startswith("emnist-sqlite-62-url-")
    tried = []
    monkeypatch.setattr(datasets, "download_file", lambda u, t, **k: tried.append(u) or _enospc())
    with pytest.raises(OSError):
        fetch_emnist_sqlite(root, progress=False)
    assert tried == [datasets.EMNIST_SQLITE_URL]


# --- the cache's checksums ---------------------------------------------------------------------


def _flip_last_byte(path: Path) -> None:
    b = bytearray(path.read_bytes())
    b[-1] ^= 0x01
    path.write_bytes(bytes(b))


def _swap_ids(path: Path) -> None:
    meta_file = path.parent / "meta.json"
    meta = json.loads(meta_file.read_text())
    ids = meta["client_ids"]
    ids[0], ids[1] = ids[1], ids[0]
    meta_file.write_text(json.dumps(meta))


def _change_label(path: Path) -> None:
    y = np.load(path)
    y[0] = (y[0] + 1) % 62
    np.save(path, y)


@pytest.mark.parametrize(
    "file, damage, what",
    [
        ("x.npy", _flip_last_byte, "x.npy does not match"),
        ("y.npy", _change_label, "y.npy does not match"),
        ("meta.json", _swap_ids, "meta.json .client ids"),
        ("offsets.npy", lambda p: p.write_bytes(p.read_bytes()[:-8]), "offsets.npy does not"),
    ],
)
def test_corrupt_cache_is_detected_and_rebuilt(tmp_path, file, damage, what):
    d = _h5_dir(tmp_path)
    cache = tmp_path / "cache"
    train, test = load_dataset("emnist", data_dir=d, cache_dir=cache)
    x0, y0, ids0 = np.array(train.x), np.array(train.y), train.client_ids
    damage(train.path / file)
    for mmap in (False, True):
        with pytest.raises(CacheCorruptError, match=f"{what}.*delete the directory") as e:
            ClientData.load(train.path, mmap=mmap)
        assert str(train.path) in str(e.value) and "\n" not in str(e.value)
    with pytest.warns(CacheRebuiltWarning, match="corrupt.*Rebuilding it from the source"):
        again, _ = load_dataset("emnist", data_dir=d, cache_dir=cache, mmap=True)
    assert again.client_ids == ids0
    assert np.array_equal(again.x, x0) and np.array_equal(again.y, y0)
    ClientData.load(again.path)  # the rebuilt entry verifies
    assert _leftovers(cache) == []


def test_cache_entry_with_train_and_test_swapped_is_detected_and_rebuilt(tmp_path):
    """Issue 17: each split verified its own checksums only, so swapped train/ and test/
    loaded (every client's test examples used for training)."""
    d = _h5_dir(tmp_path)
    cache = tmp_path / "cache"
    train, test = load_dataset("emnist", data_dir=d, cache_dir=cache)
    entry = train.path.parent
    y_train, y_test = np.array(train.y), np.array(test.y)
    (entry / "train").rename(entry / "tmp")
    (entry / "test").rename(entry / "train")
    (entry / "tmp").rename(entry / "test")
    with pytest.raises(CacheCorruptError) as e:
        load_cached(cache, entry.name)
    assert str(e.value) == (
        f"cache entry {entry} is corrupt: train/ and test/ were swapped (each holds the split "
        "recorded under the other's name in manifest.json); delete the directory and load the "
        "dataset again to rebuild it."
    )
    with pytest.warns(CacheRebuiltWarning, match="swapped.*Rebuilding it from the source"):
        again_train, again_test = load_dataset("emnist", data_dir=d, cache_dir=cache)
    assert np.array_equal(again_train.y, y_train) and np.array_equal(again_test.y, y_test)
    assert load_cached(cache, entry.name) is not None
    assert _leftovers(cache) == []


def test_cache_split_from_another_entry_or_without_manifest(tmp_path):
    d = _h5_dir(tmp_path)
    cache = tmp_path / "cache"
    train, _ = load_dataset("emnist", data_dir=d, cache_dir=cache)
    entry = train.path.parent
    (tmp_path / "o").mkdir()
    other, _ = load_dataset(
        "emnist", data_dir=_h5_dir(tmp_path / "o", n_clients=2), cache_dir=cache
    )
    shutil.rmtree(entry / "test")
    shutil.copytree(other.path, entry / "test")  # a verified split, but not this entry's test
    with pytest.raises(CacheCorruptError, match=r"corrupt: test/ is not the test split recorded"):
        load_cached(cache, entry.name)
    (entry / "manifest.json").unlink()  # an entry written before the manifest: rebuilt
    with pytest.raises(CacheStaleError, match="has no manifest.json .*older fedp13n"):
        load_cached(cache, entry.name)
    with pytest.warns(CacheRebuiltWarning, match="no manifest.json"):
        load_dataset("emnist", data_dir=d, cache_dir=cache)
    assert load_cached(cache, entry.name) is not None


def test_old_cache_format_without_checksums_is_rebuilt(tmp_path):
    d = _h5_dir(tmp_path)
    cache = tmp_path / "cache"
    train, _ = load_dataset("emnist", data_dir=d, cache_dir=cache)
    for split in ("train", "test"):
        meta_file = train.path.parent / split / "meta.json"
        meta = json.loads(meta_file.read_text())
        meta_file.write_text(
            json.dumps({k: meta[k] for k in ("client_ids", "num_examples")} | {"format_version": 1})
        )
    with pytest.raises(CacheStaleError, match="cache format 1.*checksums"):
        load_cached(cache, train.path.parent.name)
    with pytest.warns(CacheRebuiltWarning, match="format 1"):
        again, _ = load_dataset("emnist", data_dir=d, cache_dir=cache)
    assert json.loads((again.path / "meta.json").read_text())["format_version"] == 2


def test_corrupt_cache_on_the_cli_is_a_warning_line_then_rebuilt(tmp_path):
    d = _h5_dir(tmp_path)
    cache = tmp_path / "cache"
    train, _ = load_dataset("emnist", data_dir=d, cache_dir=cache)
    _flip_last_byte(train.path / "x.npy")
    res = runner.invoke(app, ["data", "download", "--data-dir", str(d), "--cache-dir", str(cache)])
    assert res.exit_code == 0, res.output
    warns = [line for line in res.output.splitlines() if line.startswith("warning: ")]
    assert len(warns) == 1 and "x.npy does not match" in warns[0]
    ClientData.load(train.path)  # rebuilt


# --- the library API refuses wrong pixels and labels ------------------------------------------


def _img(n=2, dtype=np.float32, value=0.5):
    return np.full((n, 28, 28), value, dtype=dtype)


@pytest.mark.parametrize(
    "x, y, error, match",
    [
        (_img(value=255.0), [1, 2], ValueError, "must be in \\[0, 1\\].*divide them by 255"),
        (_img(value=-0.1), [1, 2], ValueError, "must be in \\[0, 1\\].*negative or NaN"),
        (_img(value=np.nan), [1, 2], ValueError, "negative or NaN"),
        (_img(dtype=np.int64, value=200), [1, 2], TypeError, "dtype int64; give uint8"),
        (_img(), np.array([1.0, 2.0]), TypeError, "labels of image data have dtype float64"),
        (_img(), [1, 62], ValueError, "label 62 is outside 0..61"),
        (_img(), [-1, 2], ValueError, "label -1 is outside"),
    ],
)
def test_library_api_refuses_wrong_pixels_and_labels(x, y, error, match):
    with pytest.raises(error, match=f"client 'c'.*{match}"):
        ClientData.from_clients([("ok", _img(), [0, 61]), ("c", x, y)])
    with pytest.raises(error, match=f"from_arrays.*{match}"):
        ClientDataset.from_arrays(torch.from_numpy(np.asarray(x)), np.asarray(y))
    with pytest.raises(error, match=match):
        ClientData(["c"], np.asarray(x), np.asarray(y), [0, 2])


def test_generic_features_are_not_range_checked():
    # regression features and targets (as in the personalization tests) stay accepted
    ds = ClientDataset.from_arrays(np.array([[300.0, -5.0]], np.float32), np.array([1e3]))
    assert ds.tensors()[1].dtype == torch.float32
    cd = ClientData.from_clients([("a", np.full((2, 6), 1e4, np.float32), [0, 5])])
    assert cd.num_examples == 2


def test_mixed_uint8_and_float_clients_are_checked_after_promotion():
    u8 = np.full((1, 28, 28), 255, np.uint8)  # uint8 255 = 1.0; as a float it would be 255.0
    with pytest.raises(ValueError, match="divide them by 255"):
        ClientData.from_clients([("a", u8, [0]), ("b", _img(1), [1])])


def test_validator_hint_for_0_255_floats():
    with pytest.raises(DataFormatError, match="client 'c'.*divided by 255"):
        check_client(_img(value=128.0), np.array([1, 2]), source="f.h5", client_id="c")


# --- malformed LEAF JSON --------------------------------------------------------------------


def _leaf(tmp_path: Path) -> Path:
    return write_leaf(tmp_path / "leaf/train/s.json", {"u0": (np.ones((1, 28, 28)), [3])})


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d["user_data"]["u0"].__setitem__("x", "0.5"), "client 'u0'.*'x' is a str"),
        (lambda d: d["user_data"]["u0"].__setitem__("x", [["a"] * 784]), "'x' is not a list"),
        (lambda d: d["user_data"]["u0"].__setitem__("y", {"a": 1}), "client 'u0'.*'y' is a dict"),
        (lambda d: d["user_data"]["u0"].__setitem__("y", [[1], 2]), "client 'u0'.*'y'"),
        (lambda d: d["user_data"]["u0"].__setitem__("y", [3.0]), "label 3.0 .*decimal point"),
        (lambda d: d.__setitem__("users", 5), "'users' must be a list"),
        (lambda d: d.__setitem__("users", "u0"), "'users' must be a list"),
        (lambda d: d.__setitem__("users", [["u0"]]), "'users' must be a list"),
        (lambda d: d.__setitem__("user_data", [1]), "'user_data' must be an object"),
        (lambda d: d.__setitem__("num_samples", "1"), "'num_samples' must be a list"),
        (lambda d: d["user_data"].__setitem__("u0", 7), "client 'u0'.*needs 'x' and 'y'"),
    ],
)
def test_malformed_leaf_is_one_line_error(tmp_path, edit, match):
    path = _leaf(tmp_path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match=match) as e:
        load_leaf_split(path.parent)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "labels, shown, kind",
    [
        ([True], "true", "a boolean"),
        ([3, 5, True], "true", "a boolean"),  # numpy alone would read it as 1
        ([3, False], "false", "a boolean"),
        ([2.5], "2.5", "a number with a fraction"),
        ([1, 7.0], "7.0", "a number with a decimal point"),
        (["3"], '"3"', "a string"),
        ([4, None], "null", "null"),
    ],
)
def test_leaf_labels_must_be_json_integers(tmp_path, labels, shown, kind):
    """Issue 17: a LEAF label `true` was read as class 1."""
    path = write_leaf(
        tmp_path / "leaf/train/s.json", {"u0": (np.ones((len(labels), 28, 28)), [0] * len(labels))}
    )
    data = json.loads(path.read_text())
    data["user_data"]["u0"]["y"] = labels
    path.write_text(json.dumps(data))
    with pytest.raises(DataFormatError) as e:
        load_leaf_split(path.parent)
    position = next(j for j, v in enumerate(labels) if type(v) is not int)
    assert str(e.value) == (
        f"{path}: client 'u0': label {shown} (position {position} of 'y') is {kind}, expected "
        "an integer class id; write the labels as JSON integers (e.g. 3)."
    )


def test_deeply_nested_leaf_json(tmp_path):
    path = _leaf(tmp_path)
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(DataFormatError, match="nested too deeply"):
        load_leaf_split(path.parent)
    (tmp_path / "leaf/test").mkdir()
    assert_cli_error(
        [
            "info",
            "--dataset",
            "leaf",
            "--data-dir",
            str(tmp_path / "leaf"),
            "--cache-dir",
            str(tmp_path / "c"),
        ],
        str(path),
        "nested too deeply",
    )


def test_deep_nesting_inside_x(tmp_path):
    path = _leaf(tmp_path)
    deep = "[" * 50_000 + "]" * 50_000
    path.write_text('{"users": ["u0"], "user_data": {"u0": {"x": [' + deep + '], "y": [1]}}}')
    with pytest.raises(DataFormatError, match=str(path)):
        load_leaf_split(path.parent)


def test_directory_where_a_file_is_expected(tmp_path):
    (tmp_path / "leaf/train/s.json").mkdir(parents=True)
    with pytest.raises(DataFormatError, match="s.json: is a directory"):
        load_leaf_split(tmp_path / "leaf/train")
    (tmp_path / "x.h5").mkdir()
    with pytest.raises(DataNotFoundError, match="x.h5: is a directory"):
        load_h5_file(tmp_path / "x.h5")
    (tmp_path / "s.sqlite").mkdir()
    with pytest.raises(DataNotFoundError, match="s.sqlite: is a directory"):
        load_sqlite(tmp_path / "s.sqlite")
    (tmp_path / "afile").write_text("x")
    assert_cli_error(
        ["info", "--data-dir", str(tmp_path / "afile"), "--cache-dir", str(tmp_path / "c")],
        "afile is a file",
    )


@pytest.mark.skipif(is_root, reason="root reads a 0o000 file anyway")
def test_unreadable_leaf_shard(tmp_path):
    path = _leaf(tmp_path)
    path.chmod(0o000)
    try:
        with pytest.raises(DataNotFoundError, match="cannot read it: permission denied"):
            load_leaf_split(path.parent)
    finally:
        path.chmod(0o600)


def test_unreadable_leaf_shard_simulated(tmp_path, monkeypatch):
    path = _leaf(tmp_path)

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr("fedp13n.data.leaf.open", denied, raising=False)
    with pytest.raises(DataNotFoundError, match=f"{path}: cannot read it: permission denied"):
        load_leaf_split(path.parent)


# --- damaged h5 files -------------------------------------------------------------------------


def _good_client(g: h5py.Group, cid: str, n: int = 3) -> None:
    x, y, _ = make_client(n, seed=len(cid))
    c = g.create_group(cid)
    c.create_dataset("pixels", data=x, chunks=(n, 28, 28), compression="gzip")
    c.create_dataset("label", data=y)


def test_corrupt_gzip_chunk_in_h5(tmp_path):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("examples")
        _good_client(g, "ok")
        _good_client(g, "zbad", n=40)
    with h5py.File(path, "r") as f:
        info = f["examples/zbad/pixels"].id.get_chunk_info(0)
    raw = bytearray(path.read_bytes())
    mid = info.byte_offset + info.size // 2
    raw[mid : mid + 16] = bytes(b ^ 0xFF for b in raw[mid : mid + 16])
    path.write_bytes(bytes(raw))
    with pytest.raises(DataFormatError, match="client 'zbad': cannot read examples/zbad/pixels"):
        load_h5_file(path)


def test_dangling_h5_links(tmp_path):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("examples")
        _good_client(g, "ok")
        g["soft"] = h5py.SoftLink("/nowhere")
    with pytest.raises(DataFormatError, match="client 'soft'.*soft link to '/nowhere'.*not exist"):
        load_h5_file(path)
    with h5py.File(path, "a") as f:
        del f["examples/soft"]
        c = f["examples"].create_group("ext")
        c["pixels"] = h5py.ExternalLink(str(tmp_path / "missing.h5"), "/p")
        c.create_dataset("label", data=np.zeros(1, np.int32))
    with pytest.raises(DataFormatError, match="client 'ext'.*pixels is an external link"):
        load_h5_file(path)


def test_h5_declaring_a_huge_shape_is_refused_before_reading(tmp_path):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        c = f.create_group("examples").create_group("huge")
        c.create_dataset("pixels", shape=(10**9, 28, 28), dtype=np.float32, chunks=(1, 28, 28))
        c.create_dataset("label", data=np.zeros(1, np.int32))
    assert path.stat().st_size < 1 << 20
    t = time.monotonic()
    with pytest.raises(DataFormatError, match="client 'huge'.*declares shape .1000000000, 28, 28"):
        load_h5_file(path)
    assert time.monotonic() - t < 5


def test_h5_above_available_memory_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        c = f.create_group("examples").create_group("big")
        c.create_dataset("pixels", data=np.ones((40_000, 28, 28), np.float32), compression="gzip")
        c.create_dataset("label", data=np.zeros(40_000, np.int32))
    monkeypatch.setattr(resources, "available_memory", lambda: 10 << 20)
    with pytest.raises(DataFormatError, match="client 'big'.*needs about .* only 10.0 MiB"):
        load_h5_file(path)


# --- SQLite rows that are not protobuf bytes -----------------------------------------------------


@pytest.mark.parametrize(
    "blob, match",
    [
        ("a text row", "holds a str, not the bytes"),
        (10**12, "holds a int"),
        (None, "holds a NoneType"),
        (1.5, "holds a float"),
        (b"\x08" + b"\xff" * 9 + b"\x7f", "not a valid tf.train.Example.*64 bits"),
    ],
)
def test_sqlite_rows_that_are_not_protobuf_bytes(tmp_path, blob, match):
    rows = [("all_train", "c", encode_example(np.zeros(784), 1))] * 2
    rows += [("all_test", "c", encode_example(np.zeros(784), 1)), ("all_train", "d", blob)]
    db = write_sqlite(tmp_path / "b.sqlite", rows)
    with pytest.raises(DataFormatError, match=f"client 'd'.*{match}"):
        load_sqlite(db)


def test_tf_example_decoder_fuzz_raises_only_its_own_error():
    good = encode_example(UINT8_TO_UNIT[np.arange(784) % 256], 7)
    rng = np.random.default_rng(0)
    for _ in range(400):
        b = bytearray(good)
        for i in rng.integers(0, len(b), size=int(rng.integers(1, 6))):
            b[i] = int(rng.integers(0, 256))
        cut = int(rng.integers(len(b) // 2, len(b) + 1))
        with contextlib.suppress(ProtoDecodeError):
            parse_example(bytes(b[:cut]))
    with pytest.raises(ProtoDecodeError, match="expected the bytes"):
        parse_example("text")


def test_sqlite_corrupt_database_pages(tmp_path):
    db = _sqlite_with(tmp_path / "x.sqlite", "c")
    raw = bytearray(db.read_bytes())
    raw[1024:] = bytes(len(raw) - 1024)  # zero every page after the first
    db.write_bytes(bytes(raw))
    with pytest.raises(DataFormatError, match="x.sqlite"):
        load_sqlite(db)


# --- a hostile server: trickling, silent or slow -----------------------------------------------


class _Hostile(BaseHTTPRequestHandler):
    mode = "trickle"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.flush()
        try:
            for _ in range(100):  # bounded: at most a few seconds
                if self.mode == "silent":
                    time.sleep(0.05)
                    continue
                self.wfile.write(b"x" if self.mode == "trickle" else b"x" * 500)
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass  # the client gave up, as it should


@pytest.fixture
def hostile():
    servers = []

    def start(mode: str) -> str:
        handler = type("H", (_Hostile,), {"mode": mode})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
        thread.daemon = True
        thread.start()
        servers.append((httpd, thread))
        return f"http://127.0.0.1:{httpd.server_address[1]}/f"

    yield start
    for httpd, thread in servers:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(
    "mode, limits, match",
    [
        ("trickle", dict(min_rate=1000, stall_window=0.3), "stalled: .* below the minimum"),
        ("steady", dict(deadline=0.3), "exceeded the deadline of 0.3 s"),
        ("silent", dict(timeout=0.3), "no data for 0.3 s"),
    ],
)
def test_hostile_server_does_not_hang_the_download(hostile, tmp_path, mode, limits, match):
    url = hostile(mode)
    t = time.monotonic()
    with pytest.raises(DownloadError, match=match):
        download_file(url, tmp_path / "f", progress=False, **{"timeout": 2.0, **limits})
    assert time.monotonic() - t < 2.5
    assert list(tmp_path.iterdir()) == []


def test_download_limits_from_the_environment(hostile, tmp_path, monkeypatch):
    monkeypatch.setenv(download.MIN_RATE_ENV, "1000")
    monkeypatch.setenv(download.TIMEOUT_ENV, "2")
    t = time.monotonic()
    with pytest.raises(DownloadError, match="stalled.*FEDP13N_DOWNLOAD_MIN_RATE"):
        download_file(hostile("trickle"), tmp_path / "f", progress=False, stall_window=0.3)
    assert time.monotonic() - t < 2.5
    monkeypatch.setenv(download.DEADLINE_ENV, "soon")
    with pytest.raises(DataError, match="FEDP13N_DOWNLOAD_DEADLINE='soon' is not a number"):
        download_file(hostile("steady"), tmp_path / "f", progress=False)


# --- synthetic data that cannot fit fails fast -------------------------------------------------


def test_huge_synthetic_dataset_fails_fast(monkeypatch):
    monkeypatch.setattr(resources, "available_memory", lambda: 256 << 20)
    t = time.monotonic()
    with pytest.raises(ValueError, match=r"100,000 clients needs about [\d.]+ GiB.*only 256.0 MiB"):
        make_synthetic_emnist(num_clients=100_000)
    with pytest.raises(DataError, match="synthetic dataset: .*Ask for fewer clients"):
        load_dataset("synthetic", num_clients=100_000)
    assert time.monotonic() - t < 1
    assert_cli_error(
        ["info", "--dataset", "synthetic", "--num-clients", "100000"], "only 256.0 MiB"
    )
    with pytest.raises(ValueError, match="more than 1,000,000"):
        make_synthetic_emnist(num_clients=10**9)
    with pytest.raises(ValueError, match="num_clients must be a positive integer"):
        make_synthetic_emnist(num_clients=2.5)


def test_available_memory_is_plausible():
    avail = resources.available_memory()
    assert avail is None or 1 << 20 < avail < 1 << 50


def test_sha256_of_cache_files_matches_hashlib(tmp_path):
    cd = ClientData.from_clients([("a", _img(), [0, 1])])
    cd.save(tmp_path / "c")
    meta = json.loads((tmp_path / "c/meta.json").read_text())
    for name, digest in meta["sha256"].items():
        assert hashlib.sha256((tmp_path / "c" / name).read_bytes()).hexdigest() == digest


def test_disk_full_while_decompressing_keeps_the_download(server, tmp_path, monkeypatch):
    import lzma

    db = _sqlite_with(tmp_path / "db.sqlite", "c")
    url, files = server
    files["/db.lzma"] = lzma.compress(db.read_bytes())
    root = tmp_path / "cache"
    train, _ = fetch_emnist_sqlite(root, url=url + "/db.lzma", expected_counts=None, progress=False)
    shutil.rmtree(train.path.parent)  # only the download is left
    real_open = open

    def full_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        if "w" in mode:
            f.write = _enospc
        return f

    monkeypatch.setattr(download, "open", full_open, raising=False)
    with pytest.raises(StorageError, match="disk is full.*is fine and was kept"):
        fetch_emnist_sqlite(root, url=url + "/db.lzma", expected_counts=None, progress=False)
    assert [p.read_bytes() for p in _downloads(root)] == [files["/db.lzma"]]
    assert _entries(root) == [] and _leftovers(root) == []
    assert not list(root.glob("*.sqlite*"))


def test_unwritable_cache_dir_simulated(tmp_path, monkeypatch):
    d = _h5_dir(tmp_path)

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(client_data_mod.np, "save", denied)
    assert_cli_error(
        ["download", "--data-dir", str(d), "--cache-dir", str(tmp_path / "c")],
        "cannot write the cache entry",
        "permission denied",
    )
    assert list((tmp_path / "c").iterdir()) == []


def test_kept_archive_that_is_not_the_pinned_one_is_fetched_again(server, tmp_path, monkeypatch):
    url, files = server
    good = _emnist_archive()
    files["/fed_emnist.tar.bz2"] = good
    root = tmp_path / "cache"
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / "fed_emnist.tar.bz2").write_bytes(b"someone else's data")
    pinned = datasets.Published(
        url + "/fed_emnist.tar.bz2", hashlib.sha256(good).hexdigest(), COUNTS
    )
    monkeypatch.setitem(datasets.EMNIST_H5, False, pinned)
    train, _ = fetch_emnist_h5(root, progress=False)  # TFF's (here: the pinned) data
    assert train.path.parent.name == "emnist-62" and len(train) == COUNTS[0]
    assert (root / "downloads" / "fed_emnist.tar.bz2").read_bytes() == good
