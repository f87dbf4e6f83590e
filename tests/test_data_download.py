"""The downloader against a local HTTP server on 127.0.0.1 serving archives built here."""

from __future__ import annotations

import hashlib
import io
import lzma
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest

from fedp13n.data.client_data import UINT8_TO_UNIT
from fedp13n.data.datasets import fetch_emnist_h5, fetch_emnist_sqlite
from fedp13n.data.download import (
    DownloadError,
    decompress_lzma,
    download_file,
    safe_extract_tar,
)
from fedp13n.data.validate import DataFormatError, DataNotFoundError

# --- a small local server --------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/short/"):
            body = self.files[self.path[len("/short") :]]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 3])  # then hang up
            self.wfile.flush()
            self.close_connection = True
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    """Serve ``files`` (path -> bytes) on 127.0.0.1; stopped when the test ends."""
    files: dict[str, bytes] = {}
    handler = type("H", (_Handler,), {"files": files})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# --- archives built by the tests ---------------------------------------------------------------


def _h5_bytes(clients: dict[str, tuple[int, int]]) -> bytes:
    """An in-memory TFF h5 file; clients[cid] = (n examples, seed)."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        g = f.create_group("examples")
        for cid, (n, seed) in clients.items():
            rng = np.random.default_rng(seed)
            c = g.create_group(cid)
            c.create_dataset("pixels", data=UINT8_TO_UNIT[rng.integers(0, 256, (n, 28, 28))])
            c.create_dataset("label", data=rng.integers(0, 62, n).astype(np.int32))
    return buf.getvalue()


TRAIN = {"a": (4, 1), "b": (5, 2), "c": (6, 3)}  # 3 clients, 15 examples
TEST = {"a": (1, 4), "b": (2, 5), "c": (1, 6)}  # 4 examples
COUNTS = (3, 15, 4)


def _tar(members: dict[str, bytes], mode: str = "w:bz2", links: dict[str, str] | None = None):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def _emnist_archive() -> bytes:
    return _tar({"fed_emnist_train.h5": _h5_bytes(TRAIN), "fed_emnist_test.h5": _h5_bytes(TEST)})


def _downloads(root: Path) -> list[Path]:
    """The files kept in the cache's downloads/ directory."""
    return sorted((root / "downloads").glob("*")) if (root / "downloads").is_dir() else []


def _entries(root: Path) -> list[str]:
    """Cache entries (directories other than downloads/ and hidden temporaries)."""
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and p.name != "downloads" and p.name[0] != "."
    )


def _leftovers(root: Path) -> list[str]:
    """Temporary or partial files anywhere under the cache root."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.endswith(".part") or ".tmp-" in p.name or p.name.startswith(".extract")
    )


# --- tests ------------------------------------------------------------------------------------


def test_download_and_cache_success(server, tmp_path):
    url, files = server
    archive = _emnist_archive()
    files["/fed_emnist.tar.bz2"] = archive
    root = tmp_path / "cache"
    train, test = fetch_emnist_h5(
        root,
        url=url + "/fed_emnist.tar.bz2",
        sha256=hashlib.sha256(archive).hexdigest(),
        expected_counts=COUNTS,
        progress=False,
    )
    assert train.client_ids == test.client_ids == ("a", "b", "c")
    assert (len(train), train.num_examples, test.num_examples) == COUNTS
    # a custom URL is cached under its own key, never under TFF's pinned "emnist-62"
    assert train.path.parent.name.startswith("emnist-62-url-") and train.path.name == "train"
    assert [p.read_bytes() for p in _downloads(root)] == [archive]
    assert _downloads(root)[0].name.startswith("fed_emnist-url-")
    assert _leftovers(root) == []
    assert not list(root.rglob("*.h5"))  # extracted files removed after conversion
    # later loads from the same URL come from the cache: the server no longer has the file
    files.clear()
    again, _ = fetch_emnist_h5(
        root,
        url=url + "/fed_emnist.tar.bz2",
        sha256=hashlib.sha256(archive).hexdigest(),
        expected_counts=COUNTS,
        progress=False,
    )
    assert np.array_equal(again.x, train.x) and again.client_ids == train.client_ids


def test_download_file_with_progress_bar(server, tmp_path):
    url, files = server
    files["/blob"] = bytes(range(256)) * 5000
    out = download_file(url + "/blob", tmp_path / "d" / "blob", progress=True)
    assert out.read_bytes() == files["/blob"]
    assert not (tmp_path / "d" / "blob.part").exists()


def test_interrupted_transfer_leaves_nothing(server, tmp_path):
    url, files = server
    files["/fed_emnist.tar.bz2"] = _emnist_archive()
    root = tmp_path / "cache"
    with pytest.raises(DownloadError, match="interrupted.*run the command again"):
        fetch_emnist_h5(
            root, url=url + "/short/fed_emnist.tar.bz2", expected_counts=COUNTS, progress=False
        )
    assert _downloads(root) == []
    assert _entries(root) == []
    assert _leftovers(root) == []


def test_wrong_sha256_and_http_error(server, tmp_path):
    url, files = server
    files["/x"] = b"payload"
    with pytest.raises(DownloadError, match="SHA-256"):
        download_file(url + "/x", tmp_path / "x", sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DownloadError, match="404"):
        download_file(url + "/missing", tmp_path / "y", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_archive(server, tmp_path):
    url, files = server
    files["/bad.tar.bz2"] = b"BZh9" + bytes(range(256)) * 4
    root = tmp_path / "cache"
    with pytest.raises(DownloadError, match="corrupt or not a tar archive.*download it afresh"):
        fetch_emnist_h5(root, url=url + "/bad.tar.bz2", expected_counts=COUNTS, progress=False)
    assert _downloads(root) == []  # bad archive deleted
    assert _entries(root) == [] and _leftovers(root) == []


def test_archive_escaping_target_is_rejected(server, tmp_path):
    url, files = server
    files["/evil.tar.bz2"] = _tar(
        {"fed_emnist_train.h5": _h5_bytes(TRAIN), "../../escaped.h5": b"gotcha"}
    )
    root = tmp_path / "a" / "cache"
    with pytest.raises(DownloadError, match="unsafe.*outside.*deleted"):
        fetch_emnist_h5(root, url=url + "/evil.tar.bz2", expected_counts=COUNTS, progress=False)
    assert not list(tmp_path.rglob("escaped.h5"))
    assert _downloads(root) == []
    assert _entries(root) == []


@pytest.mark.parametrize(
    "members, links",
    [
        ({"/abs/evil.h5": b"x"}, None),
        ({"ok.h5": b"x"}, {"link.h5": "/etc/passwd"}),
    ],
)
def test_safe_extract_rejects_absolute_paths_and_links(tmp_path, members, links):
    archive = tmp_path / "t.tar"
    archive.write_bytes(_tar(members, mode="w", links=links))
    with pytest.raises(DownloadError, match="unsafe"):
        safe_extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "ok.h5").exists()  # checked before anything is written


def test_wrong_counts(server, tmp_path):
    url, files = server
    files["/fed_emnist.tar.bz2"] = _emnist_archive()
    root = tmp_path / "cache"
    with pytest.raises(DataFormatError, match="expected 3400 clients.*found 3, 15 and 4"):
        fetch_emnist_h5(root, url=url + "/fed_emnist.tar.bz2", progress=False)  # published
    assert _entries(root) == [] and _leftovers(root) == []
    assert not list(root.rglob("*.h5"))


def test_archive_without_h5_files(server, tmp_path):
    url, files = server
    files["/f.tar.bz2"] = _tar({"readme.txt": b"hi"})
    with pytest.raises(DataNotFoundError, match="no fed_emnist_train.h5"):
        fetch_emnist_h5(tmp_path, url=url + "/f.tar.bz2", expected_counts=None, progress=False)


def test_sqlite_distribution_downloaded_and_decompressed(server, tmp_path):
    from test_data_loaders import encode_example, write_sqlite

    rows = []
    for split, cid, n in (
        ("all_train", "w1", 3),
        ("all_test", "w1", 1),
        ("all_train", "w0", 2),
        ("all_test", "w0", 2),
    ):
        for i in range(n):
            px = UINT8_TO_UNIT[np.full((28, 28), 7 * i + n)]
            rows.append((split, cid, encode_example(px, i + 10)))
    db = write_sqlite(tmp_path / "emnist_all.sqlite", rows)
    url, files = server
    files["/emnist_all.sqlite.lzma"] = lzma.compress(db.read_bytes(), format=lzma.FORMAT_ALONE)
    root = tmp_path / "cache"
    train, test = fetch_emnist_sqlite(
        root, url=url + "/emnist_all.sqlite.lzma", expected_counts=(2, 5, 3), progress=False
    )
    assert train.client_ids == ("w0", "w1")
    assert train.create_dataset("w1").y.tolist() == [10, 11, 12]
    assert train.create_dataset("w1").x[2, 0, 0] == 7 * 2 + 3
    assert not list(root.glob("*.sqlite*")) and _leftovers(root) == []


def test_corrupt_lzma(tmp_path):
    src = tmp_path / "x.sqlite.lzma"
    src.write_bytes(b"\x5d\x00\x00" + b"\xff" * 50)
    with pytest.raises(DownloadError, match="corrupt or not LZMA"):
        decompress_lzma(src, tmp_path / "x.sqlite", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.sqlite.lzma"]
