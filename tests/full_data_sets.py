"""Small data sets in TFF's exact h5 layout that hold the awkward clients of TFF's *full*
federated Shakespeare and EMNIST-62, which the real samples beside the repository leave
out (``../shared/data/shakespeare_sample/README.md``: 65 roles with one train snippet, 26
whose only test snippet is empty, 150 empty train and 45 empty test snippets, snippets of
up to 6,835 characters, a role with 10 test characters; EMNIST: writers with one train
example, since LEAF's split keeps writers with two examples, one train and one test).

The layout is the one of TFF's files (and of the samples): ``examples/<id>/snippets`` a
1-D fixed-length ``|S<n>`` dataset (n = the client's longest snippet, at least 1),
chunked, gzip level 9; ``examples/<id>/pixels`` float32 (n, 28, 28) in [0, 1] (1.0 the
background) chunked, gzip 9 with shuffle, ``examples/<id>/label`` int32 (n,).
Used by ``tests/test_full_data_clients.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cloudpickle
import h5py
import numpy as np
import torch
from torch import nn

from fedp13n.models.spec import InputSpec

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers get these by value

SPEECH = (
    "the king my lord good sir what is this I will not be so thou art a villain and her "
    "love shall come to me now O speak no more let us go hence fair madam"
)
WORDS = tuple(SPEECH.split())


def _text(rng: np.random.Generator, n_chars: int) -> str:
    """Synthetic speech of exactly ``n_chars`` characters (words, spaces, newlines)."""
    out = ""
    while len(out) < n_chars:
        word = WORDS[int(rng.integers(len(WORDS)))]
        out += word + ("\n" if rng.random() < 0.1 else " ")
    return out[:n_chars]


def _normal_role(rng: np.random.Generator, n_train: int, n_test: int):
    lengths = lambda k: [int(v) for v in rng.integers(20, 300, size=k)]  # noqa: E731
    return ([_text(rng, n) for n in lengths(n_train)], [_text(rng, n) for n in lengths(n_test)])


def shakespeare_roles(num_normal: int = 8, seed: int = 0) -> dict[str, tuple[list, list]]:
    """``{role: (train snippets, test snippets)}``: ``num_normal`` roles of 6 to 12 train
    and 2 test snippets of 20 to 300 characters, and the full data set's awkward roles."""
    rng = np.random.default_rng(seed)
    roles = {f"PLAY_NORMAL_{i:02d}": _normal_role(rng, 6 + i % 7, 2) for i in range(num_normal)}
    roles |= {
        # one train snippet (65 such roles in TFF's full set)
        "PLAY_ONE_TRAIN": ([_text(rng, 40)], [_text(rng, 60)]),
        # the only test snippet is the empty string (26 such roles)
        "PLAY_EMPTY_TEST": (_normal_role(rng, 5, 0)[0], [""]),
        # one train snippet, and it is empty; the test snippet empty too
        "PLAY_ALL_EMPTY": ([""], [""]),
        # empty snippets among the train and test snippets (150 and 45 in all)
        "PLAY_SOME_EMPTY": (["", _text(rng, 50), "", _text(rng, 90)], [_text(rng, 30), ""]),
        # the longest snippet of the full set: 6,835 characters (85 examples)
        "PLAY_LONG": ([_text(rng, 6835), _text(rng, 100)], [_text(rng, 200)]),
        # 10 test characters: less than one 80-character window
        "PLAY_TINY_TEST": (_normal_role(rng, 4, 0)[0], [_text(rng, 10)]),
    }
    return roles


def _write_snippets(path: Path, clients: dict[str, list[str]]) -> None:
    with h5py.File(path, "w") as f:
        group = f.create_group("examples")
        for cid in sorted(clients):
            raw = [s.encode() for s in clients[cid]]
            width = max(1, *(len(b) for b in raw))
            arr = np.array(raw, dtype=f"|S{width}")
            group.create_group(cid).create_dataset(
                "snippets", data=arr, chunks=arr.shape, compression="gzip", compression_opts=9
            )


def write_shakespeare(data_dir: Path, roles: dict | None = None) -> dict[str, tuple[list, list]]:
    """``shakespeare_{train,test}.h5`` in ``data_dir`` (created); returns the roles."""
    roles = shakespeare_roles() if roles is None else roles
    data_dir.mkdir(parents=True, exist_ok=True)
    _write_snippets(data_dir / "shakespeare_train.h5", {c: r[0] for c, r in roles.items()})
    _write_snippets(data_dir / "shakespeare_test.h5", {c: r[1] for c, r in roles.items()})
    return roles


def emnist_writers(num_normal: int = 12, seed: int = 0) -> dict[str, tuple[int, int]]:
    """``{writer: (train examples, test examples)}``: ``num_normal`` writers of 8 to 19
    train and 2 to 4 test examples, and the smallest writers LEAF's split keeps (two
    examples: one train, one test; three: two and one)."""
    rng = np.random.default_rng(seed)
    writers = {
        f"f{i:04d}_00": (int(rng.integers(8, 20)), int(rng.integers(2, 5)))
        for i in range(num_normal)
    }
    writers |= {"f9000_01": (1, 1), "f9001_02": (1, 1), "f9002_03": (2, 1)}
    return writers


def _images(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """float32 (n, 28, 28) in [0, 1], exactly k / 255 as TFF's pixels: background 1.0, a
    dark bar whose place depends on the label (so a model can learn something)."""
    x = np.full((len(labels), 28, 28), 255, dtype=np.uint8)
    for i, label in enumerate(labels):
        row = 2 + int(label) % 24
        x[i, row : row + 3, 4:24] = rng.integers(0, 60, size=(3, 20))
    return (x / np.float32(255.0)).astype(np.float32)


def write_emnist(data_dir: Path, writers: dict | None = None, seed: int = 0) -> dict:
    """``fed_emnist_{train,test}.h5`` in ``data_dir`` (created); returns the writers."""
    writers = emnist_writers() if writers is None else writers
    rng = np.random.default_rng(seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, name in ((0, "fed_emnist_train.h5"), (1, "fed_emnist_test.h5")):
        with h5py.File(data_dir / name, "w") as f:
            group = f.create_group("examples")
            for cid in sorted(writers):
                n = writers[cid][split]
                y = rng.integers(0, 62, size=n).astype(np.int32)
                x = _images(rng, y)
                g = group.create_group(cid)
                g.create_dataset(
                    "pixels", data=x, chunks=(max(1, (n + 1) // 2), 14, 28),
                    compression="gzip", compression_opts=9, shuffle=True,
                )  # fmt: skip
                g.create_dataset(
                    "label", data=y, chunks=(n,), compression="gzip", compression_opts=9
                )
    return writers


# -- one's own data (``--dataset full_data_sets:small_writers``): clients TFF's files do not
# have, but a data set of one's own (or a partition) can: no test examples, no train examples
def small_writers() -> tuple[dict, dict]:
    """EMNIST-shaped ``(train, test)`` dicts ``{id: (x, y)}``: 12 normal writers (as
    :func:`emnist_writers`), 3 without test examples (``"no_test_*"``, 5 train examples),
    one with a single train example and one with no train example (3 test examples)."""
    sizes = {f"w{i:02d}": (8 + i % 5, 3) for i in range(12)}
    sizes |= {f"no_test_{i}": (5, 0) for i in range(3)}
    sizes |= {"one_train": (1, 2), "no_train": (0, 3)}
    rng = np.random.default_rng(1)
    train, test = {}, {}
    for cid, (n_train, n_test) in sizes.items():
        for out, n in ((train, n_train), (test, n_test)):
            y = rng.integers(0, 4, size=n).astype(np.int64)  # 4 classes: learnt in 2 rounds
            out[cid] = (_images(rng, y), y)
    return train, test


# -- tiny models, so that a CLI run on these data takes seconds ---------------------------------
class TinyChar(nn.Module):
    """Next-character logits ``(B, classes, S)`` for ids ``(B, S)``, as TFF's Shakespeare
    model gives them: an embedding of 8, a dense layer (with ``bn``: a batch norm over its
    16 features at every position, for FedBN), the output layer."""

    def __init__(self, num_classes: int = 90, bn: bool = False) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_classes, 8)
        self.hidden = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16) if bn else nn.Identity()
        self.out = nn.Linear(16, num_classes)
        self.input_spec = InputSpec(x_shape=(80,), y_shape=(80,), x_dtype=torch.int32,
                                    y_dtype=torch.int64)  # fmt: skip

    def forward(self, x):
        h = self.hidden(self.embedding(x.long())).transpose(1, 2)  # (B, 16, S)
        return self.out(self.bn(h).relu().transpose(1, 2)).transpose(1, 2)


def tiny_char() -> nn.Module:
    return TinyChar()


def tiny_char_bn() -> nn.Module:
    return TinyChar(bn=True)


def tiny_image(num_classes: int) -> nn.Module:
    """28x28 images -> logits: a 2x2 pooling, a batch norm (for FedBN), one dense layer."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 28)), nn.AvgPool2d(4), nn.BatchNorm2d(1), nn.Flatten(),
        nn.Linear(49, num_classes),
    )  # fmt: skip
