"""Federated Shakespeare data: TFF's character preprocessing, the h5 / LEAF loaders, the
checked download.

TFF's own numbers (``TFF``) come from ``tests/data/record_tff_shakespeare.py``, which
ran TFF 0.87's ``char_prediction_preprocessing`` on ``../shared/data/shakespeare_sample``.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest

from fedp13n.data.client_data import ClientData
from fedp13n.data.datasets import (
    download_notice,
    fetch_shakespeare,
    load_shakespeare_dir,
    load_shakespeare_leaf,
)
from fedp13n.data.download import DownloadError
from fedp13n.data.shakespeare import (
    BOS_ID,
    EOS_ID,
    OOV_IDS,
    PAD_ID,
    SEQUENCE_LENGTH,
    VOCAB,
    VOCAB_SIZE,
    load_shakespeare_h5,
    read_shakespeare_dir,
    snippets_to_examples,
    to_ids,
)
from fedp13n.data.validate import DataFormatError, DataNotFoundError

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/data/shakespeare_sample"
needs_sample = pytest.mark.skipif(
    not (SAMPLE / "shakespeare_train.h5").is_file(), reason="shakespeare_sample absent"
)

# -- the constants, as TFF 0.87 printed them (record_tff_shakespeare.py) ----------------------

TFF_CHAR_VOCAB = (
    "dhlptx@DHLPTX $(,048cgkoswCGKOSW[_#'/37;?bfjnrvzBFJNRVZ\"&*.26:\naeimquyAEIMQUY]!%)-159\r"
)
TFF_SPECIAL_TOKENS = (0, 87, 88, 89)  # get_special_tokens(): pad, oov, bos, eos


def test_constants_are_tffs():
    assert "".join(VOCAB) == TFF_CHAR_VOCAB and len(VOCAB) == 86
    assert (PAD_ID, *OOV_IDS, BOS_ID, EOS_ID) == TFF_SPECIAL_TOKENS
    assert VOCAB_SIZE == 90  # char_prediction_tasks.VOCAB_LENGTH = len(CHAR_VOCAB) + 4
    assert SEQUENCE_LENGTH == 80


# -- hand-computed ids --------------------------------------------------------------------------


def test_hand_computed_ids_with_padding_oov_and_eos():
    # "Hi~": 'H' is VOCAB[8] (d h l p t x @ D H) -> id 9; 'i' is VOCAB[65] (counted in
    # TFF_CHAR_VOCAB: "\n" is 62, then a 63, e 64, i 65) -> id 66; '~' is not in the
    # vocabulary -> the out-of-vocabulary id 86 + 1 = 87. Framed: 88 (BOS), 9, 66, 87,
    # 89 (EOS): 5 ids, padded with 0 to 81; x = the first 80, y = the last 80.
    ids = to_ids("Hi~")
    assert ids.dtype == np.int32 and ids.shape == (81,)
    assert ids[:5].tolist() == [88, 9, 66, 87, 89] and not ids[5:].any()
    x, y = snippets_to_examples(["Hi~"])
    assert x.dtype == np.int32 and y.dtype == np.int32 and x.shape == y.shape == (1, 80)
    assert x[0].tolist() == [88, 9, 66, 87, 89] + [0] * 75
    assert y[0].tolist() == [9, 66, 87, 89] + [0] * 76


def test_short_sequences_split_into_chunks_per_snippet():
    # sequence_length 3 -> chunks of 4. "Hi~" -> 88 9 66 87 | 89 0 0 0 (5 ids padded to 8);
    # "" -> 88 89 0 0 (an empty snippet still gives one example, as in TFF); "e" (64 + 1 =
    # 65) -> 88 65 89 0. No chunk spans two snippets.
    x, y = snippets_to_examples([b"Hi~", b"", b"e"], sequence_length=3)
    assert x.tolist() == [[88, 9, 66], [89, 0, 0], [88, 89, 0], [88, 65, 89]]
    assert y.tolist() == [[9, 66, 87], [0, 0, 0], [89, 0, 0], [65, 89, 0]]


def test_example_counts_at_the_chunk_boundary():
    # n bytes give ceil((n + 2) / 81) examples: 79 -> 1 (exactly 81 ids, no pad), 80 -> 2.
    for n, expected in ((0, 1), (1, 1), (79, 1), (80, 2), (160, 2), (161, 3)):
        x, _ = snippets_to_examples(["a" * n])
        assert len(x) == expected, n
    x, y = snippets_to_examples(["a" * 79])
    assert x[0, -1] == 64 and y[0, -1] == EOS_ID  # 'a' is VOCAB[63] -> 64; no padding


def test_bytes_not_characters_as_tf_bytes_split():
    # TFF splits the UTF-8 bytes: "é" is two bytes, both out of vocabulary.
    assert to_ids("é")[:4].tolist() == [88, 87, 87, 89]
    assert to_ids("é".encode())[:4].tolist() == [88, 87, 87, 89]
    assert snippets_to_examples([])[0].shape == (0, 80)
    with pytest.raises(ValueError, match="sequence_length must be a positive integer"):
        snippets_to_examples(["a"], sequence_length=0)


# -- TFF's own preprocessing of the real sample -------------------------------------------------

#: record_tff_shakespeare.py: TFF's number of examples, sums of x and y ids, per client.
TFF_CLIENTS = {
    "train": {
        "ALL_S_WELL_THAT_ENDS_WELL_AEDILE": (10, 17048, 16342),
        "ALL_S_WELL_THAT_ENDS_WELL_ALL": (25, 32850, 30716),  # has an empty snippet
        "ALL_S_WELL_THAT_ENDS_WELL_MARDIAN": (11, 21174, 20629),
        "THE_FIRST_PART_OF_KING_HENRY_THE_FOURTH_BULLCALF": (9, 19246, 18839),
        "THE_TRAGEDY_OF_KING_LEAR_KING": (198, 398238, 388821),
    },
    "test": {
        "ALL_S_WELL_THAT_ENDS_WELL_AEDILE": (2, 1379, 1203),
        "ALL_S_WELL_THAT_ENDS_WELL_MARDIAN": (2, 1660, 1484),  # has an empty snippet
        "THE_FIRST_PART_OF_KING_HENRY_THE_FOURTH_BULLCALF": (1, 589, 501),  # 10 characters
        "THE_TRAGEDY_OF_KING_LEAR_KING": (25, 53635, 52319),
    },
}
#: TFF's totals over all 200 clients: examples, sum of x ids, sum of y ids, and the
#: SHA-256 of all x (then all y) as little-endian int64, clients in file order.
TFF_TOTALS = {
    "train": (
        15651,
        33773894,
        33193586,
        "832032555037687d1d94e3f0846c833b7b1623c2600d28614003d49672fcfaf3",
        "48feb8a2fefd38d5fdb62252fc1c3254a097d910de3825b3d6695124eb439fa7",
    ),
    "test": (
        2126,
        4563664,
        4483822,
        "a1ff4a7f2b8867c2bf9d0fb63f5e2d3ef5f91ef0757370b9697ae1ddbef1840e",
        "6632d8dbb5d36b8f6f621ec7d57f1cb69fef87aff4719c1bddb21f4e7dd416b9",
    ),
}
#: TFF's first example of two test clients.
TFF_FIRST = {
    # "Here, sir.": the whole 10-character client, one padded example.
    "THE_FIRST_PART_OF_KING_HENRY_THE_FOURTH_BULLCALF": [88, 9, 65, 46, 65, 17, 14, 25, 66, 46]
    + [59, 89]
    + [0] * 68,
    "ALL_S_WELL_THAT_ENDS_WELL_AEDILE": [88, 73, 14, 2, 64, 47, 65, 59, 89] + [0] * 71,
}


@pytest.fixture(scope="module")
def sample():
    return read_shakespeare_dir(SAMPLE)


@needs_sample
def test_sample_matches_tffs_preprocessing(sample):
    train, test, snippets = sample
    assert snippets == (6588, 900)  # the sample's README
    assert len(train) == len(test) == 200 and train.client_ids == test.client_ids
    assert list(train.client_ids) == (SAMPLE / "clients.txt").read_text().split()
    for split, cd in (("train", train), ("test", test)):
        assert cd.x.dtype == cd.y.dtype == np.int32 and cd.x.shape[1:] == (80,)
        n, sx, sy, hx, hy = TFF_TOTALS[split]
        assert (cd.num_examples, int(cd.x.sum()), int(cd.y.sum())) == (n, sx, sy)
        assert hashlib.sha256(cd.x.astype("<i8").tobytes()).hexdigest() == hx
        assert hashlib.sha256(cd.y.astype("<i8").tobytes()).hexdigest() == hy
        for cid, expected in TFF_CLIENTS[split].items():
            d = cd.create_dataset(cid)
            assert (len(d), int(d.x.sum()), int(d.y.sum())) == expected, (split, cid)
    for cid, first in TFF_FIRST.items():
        d = test.create_dataset(cid)
        assert d.x[0].tolist() == first and d.y[0].tolist() == first[1:] + [0]


def _h5_snippets(split: str) -> dict[str, list[bytes]]:
    with h5py.File(SAMPLE / f"shakespeare_{split}.h5") as f:
        return {c: list(f["examples"][c]["snippets"][()]) for c in f["examples"]}


@needs_sample
def test_sample_edge_clients_and_oov_count(sample):
    train, test, _ = sample
    snippets = {"train": _h5_snippets("train"), "test": _h5_snippets("test")}
    assert snippets["test"]["THE_FIRST_PART_OF_KING_HENRY_THE_FOURTH_BULLCALF"] == [b"Here, sir."]
    assert b"" in snippets["test"]["ALL_S_WELL_THAT_ENDS_WELL_MARDIAN"]
    assert b"" in snippets["train"]["ALL_S_WELL_THAT_ENDS_WELL_ALL"]
    for split, cd in (("train", train), ("test", test)):
        every = [s for ss in snippets[split].values() for s in ss]
        # Plain loop: each snippet gives ceil((bytes + 2) / 81) examples, each byte
        # outside the vocabulary one OOV id (the sample has two: '}' twice in train).
        assert cd.num_examples == sum(-(-(len(s) + 2) // 81) for s in every)
        oov = sum(ch not in TFF_CHAR_VOCAB for s in every for ch in s.decode())
        assert int((cd.x == OOV_IDS[0]).sum()) == oov == (2 if split == "train" else 0)
        assert int((cd.x == BOS_ID).sum()) == len(every) and not (cd.y == BOS_ID).any()
        # EOS sits at position n + 1 of a snippet's ids: it is in y unless it starts a
        # chunk ((n + 1) % 81 == 0), in x unless it ends one ((n + 1) % 81 == 80).
        assert int((cd.y == EOS_ID).sum()) == sum((len(s) + 1) % 81 != 0 for s in every)
        assert int((cd.x == EOS_ID).sum()) == sum((len(s) + 1) % 81 != 80 for s in every)


@needs_sample
def test_examples_reach_the_model_as_integers(sample):
    _, test, _ = sample
    xb, yb = test.create_dataset("THE_TRAGEDY_OF_KING_LEAR_KING").batch(slice(0, 4))
    assert not xb.is_floating_point() and not yb.is_floating_point()  # never pixels k/255
    assert xb.shape == yb.shape == (4, 80) and int(xb.max()) <= VOCAB_SIZE - 1


# -- h5 files made here: fixed- and variable-length strings ---------------------------------

SNIPPETS = {"b": [b"To be", b"", b"Hi~"], "a": [b"e" * 100]}


def _write_h5(path: Path, clients: dict[str, list[bytes]], *, vlen: bool) -> None:
    with h5py.File(path, "w") as f:
        g = f.create_group("examples")
        for cid, snippets in clients.items():
            if vlen:
                data = np.array(snippets, dtype=object)
                g.create_group(cid).create_dataset(
                    "snippets", data=data, dtype=h5py.string_dtype("ascii")
                )
            else:  # TFF's storage: |S<n>, n the longest snippet, NUL padded
                width = max(1, *(len(s) for s in snippets))
                g.create_group(cid).create_dataset(
                    "snippets", data=np.array(snippets, dtype=f"S{width}")
                )


def test_fixed_and_variable_length_strings_give_the_same_examples(tmp_path):
    _write_h5(tmp_path / "fixed.h5", SNIPPETS, vlen=False)
    _write_h5(tmp_path / "vlen.h5", SNIPPETS, vlen=True)
    with h5py.File(tmp_path / "vlen.h5") as f:
        assert h5py.check_string_dtype(f["examples/a/snippets"].dtype) is not None
    fixed, n = load_shakespeare_h5(tmp_path / "fixed.h5")
    vlen, _ = load_shakespeare_h5(tmp_path / "vlen.h5")
    assert n == 4 and fixed.client_ids == vlen.client_ids == ("a", "b")  # h5's sorted order
    assert np.array_equal(fixed.x, vlen.x) and np.array_equal(fixed.y, vlen.y)
    # a: 100 + 2 ids -> 2 examples; b: "To be" 1, "" 1, "Hi~" 1.
    assert fixed.client_sizes().tolist() == [2, 3]
    b = fixed.create_dataset("b")
    assert b.x[1, :3].tolist() == [BOS_ID, EOS_ID, PAD_ID]  # the empty snippet
    assert b.x[2, :5].tolist() == [88, 9, 66, 87, 89]  # "Hi~", as by hand above


def test_bad_h5_layout_is_one_line_error(tmp_path):
    with h5py.File(tmp_path / "ints.h5", "w") as f:
        f.create_group("examples/a").create_dataset("snippets", data=np.arange(3))
    with pytest.raises(DataFormatError, match=r"client 'a'.*dtype int64; expected byte strings"):
        load_shakespeare_h5(tmp_path / "ints.h5")
    with h5py.File(tmp_path / "none.h5", "w") as f:
        f.create_group("pixels")
    with pytest.raises(DataFormatError, match="no 'examples' group"):
        load_shakespeare_h5(tmp_path / "none.h5")
    with pytest.raises(DataNotFoundError, match="shakespeare_train.h5"):
        read_shakespeare_dir(tmp_path)


def test_load_shakespeare_dir_is_cached(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    _write_h5(d / "shakespeare_train.h5", SNIPPETS, vlen=False)
    _write_h5(d / "shakespeare_test.h5", {"a": [b"Hi~"], "b": [b"e"]}, vlen=True)
    train, test = load_shakespeare_dir(d, tmp_path / "cache")
    assert train.path is not None and train.path.is_relative_to(tmp_path / "cache")
    assert train.num_examples == 5 and test.num_examples == 2
    again, _ = load_shakespeare_dir(d, tmp_path / "cache")
    assert again.path == train.path and np.array_equal(again.x, train.x)
    assert again.x.dtype == np.int32


# -- LEAF's JSON --------------------------------------------------------------------------------


def test_leaf_json_windows(tmp_path):
    # One LEAF sample: an 80-character window "a" * 79 + "H" and the next character "~".
    # x: 'a' -> 64 (79 times), 'H' -> 9 (no BOS: LEAF cuts windows from running text);
    # y: x shifted by one, then the next character's id: '~' -> 87 (out of vocabulary).
    window = "a" * 79 + "H"
    for split, users in (("train", ["u1", "u2"]), ("test", ["u1", "u2"])):
        (tmp_path / split).mkdir()
        data = {
            "users": users,
            "num_samples": [1, 2],
            "user_data": {
                "u1": {"x": [window], "y": ["~"]},
                "u2": {"x": [window, "e" * 80], "y": ["e", "a"]},
            },
        }
        (tmp_path / split / "all_data_niid.json").write_text(json.dumps(data))
    train, test = load_shakespeare_leaf(tmp_path, tmp_path / "cache")
    assert train.client_ids == ("u1", "u2") and train.client_sizes().tolist() == [1, 2]
    u1 = train.create_dataset("u1")
    assert u1.x.dtype == np.int32 and u1.x.shape == (1, 80)
    assert u1.x[0].tolist() == [64] * 79 + [9]
    assert u1.y[0].tolist() == [64] * 78 + [9, 87]
    u2 = test.create_dataset("u2")
    assert u2.y[1].tolist() == [65] * 79 + [64]  # 'e' -> 65, next 'a' -> 64
    (tmp_path / "train" / "bad.json").write_text(
        json.dumps({"users": ["v"], "user_data": {"v": {"x": ["short"], "y": ["a"]}}})
    )
    with pytest.raises(DataFormatError, match=r"x\[0\] is not a string of 80 characters"):
        load_shakespeare_leaf(tmp_path, tmp_path / "cache")
    # FEMNIST's LEAF shards (784 pixel values per sample) given as Shakespeare: named.
    (tmp_path / "train" / "bad.json").write_text(
        json.dumps({"users": ["f1"], "user_data": {"f1": {"x": [[0.5] * 784], "y": [3]}}})
    )
    with pytest.raises(DataFormatError, match=r"784 numbers, FEMNIST's LEAF pixels.*--task emnist"):
        load_shakespeare_leaf(tmp_path, tmp_path / "cache2")


# -- the checked download -----------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
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


def _archive(tmp_path: Path) -> bytes:
    """A shakespeare.tar.bz2 as TFF's: the two h5 files (3 + 2 snippets, 2 clients)."""
    _write_h5(tmp_path / "tr.h5", {"a": [b"Hi~", b""], "b": [b"e"]}, vlen=False)
    _write_h5(tmp_path / "te.h5", {"a": [b"x"], "b": [b"y"]}, vlen=False)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:bz2") as tar:
        tar.add(tmp_path / "tr.h5", "shakespeare_train.h5")
        tar.add(tmp_path / "te.h5", "shakespeare_test.h5")
    return buf.getvalue()


def test_fetch_shakespeare_downloads_and_caches(server, tmp_path):
    url, files = server
    files["/shakespeare.tar.bz2"] = _archive(tmp_path)
    root = tmp_path / "cache"
    src = url + "/shakespeare.tar.bz2"
    assert download_notice("shakespeare", None, root, url=src).startswith(
        f"downloading Shakespeare from {src}"
    )
    train, test = fetch_shakespeare(root, url=src, expected_counts=(2, 3, 2), progress=False)
    assert train.client_ids == ("a", "b") and train.client_sizes().tolist() == [2, 1]
    assert train.create_dataset("a").x[0, :5].tolist() == [88, 9, 66, 87, 89]
    assert test.num_examples == 2 and test.x.dtype == np.int32
    assert download_notice("shakespeare", None, root, url=src) is None
    del files["/shakespeare.tar.bz2"]  # a second load reads the cache only
    again, _ = fetch_shakespeare(root, url=src, progress=False)
    assert np.array_equal(again.x, train.x) and isinstance(again, ClientData)


def test_fetch_shakespeare_checks_sha256_and_counts(server, tmp_path):
    url, files = server
    files["/s.tar.bz2"] = body = _archive(tmp_path)
    root, src = tmp_path / "cache", url + "/s.tar.bz2"
    with pytest.raises(DownloadError, match="is corrupt: SHA-256") as e:
        fetch_shakespeare(root, url=src, sha256="0" * 64, progress=False)
    assert "\n" not in str(e.value)
    assert not list((root / "downloads").glob("*"))  # nothing kept
    with pytest.raises(DataFormatError, match="expected 715 clients, 16068 train and 2356"):
        fetch_shakespeare(root, url=src, progress=False)  # TFF's published counts
    assert not list((root / "downloads").glob("*"))  # the wrong archive was deleted
    sha = hashlib.sha256(body).hexdigest()
    train, _ = fetch_shakespeare(root, url=src, sha256=sha, expected_counts=None, progress=False)
    assert train.num_examples == 3
    assert len(list((root / "downloads").glob("*.tar.bz2"))) == 1  # the checked archive
