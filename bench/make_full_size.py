"""Write full-size synthetic federations in TFF's exact h5 layout, for scale audits.

TFF's full federated EMNIST-62 has 3,400 writers (671,585 train and 77,483 test examples;
writers of about 10 to 450 train examples, mean about 198) and federated Shakespeare 715
roles (16,068 train and 2,356 test snippets). No copy of the full files is needed: this
script writes files of those sizes, in the layout of TFF's (``examples/<id>/pixels``
float32 (n, 28, 28) and ``examples/<id>/label`` int32, chunked, gzip with shuffle;
``examples/<id>/snippets`` fixed-length ``|S<n>``, chunked, gzip), from the real samples
beside the repository (``../shared/data/femnist_sample``, ``../shared/data/shakespeare_sample``):

- EMNIST: 3,400 writers ``f<NNNN>_<NN>`` whose train sizes are drawn from a gamma
  distribution (shape 4, mean 198, clipped to 10..450) and scaled to 671,585 in all; test
  sizes are 77,483/671,585 of that (at least 1). Each writer's images and labels are
  drawn (with replacement) from one real sample writer's examples of the same split, so
  writers keep their own style and label mix.
- Shakespeare: 501 roles resampled (with replacement) from the 200 sample roles, with all
  their snippets, and 214 small roles of 1 to 3 train snippets and 1 test snippet taken
  from a random sample role (TFF's full set has 214 roles smaller than the sample's), 715
  in all, ids ``PLAY_<NNN>_<sample role>``.

Run (about 6 minutes on one busy core; 250 MB of files at gzip level 9, TFF's):
``python bench/make_full_size.py --out /tmp/scale24`` writes ``<out>/emnist`` and
``<out>/shakespeare``; then e.g. ``fedp13n run --data-dir /tmp/scale24/emnist ...``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import h5py
import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
EMNIST_WRITERS, EMNIST_TRAIN, EMNIST_TEST = 3400, 671_585, 77_483
SHAKESPEARE_ROLES, SHAKESPEARE_BIG = 715, 501


def emnist_sizes(seed: int = 0) -> list[tuple[int, int]]:
    """``EMNIST_WRITERS`` (train, test) sizes: gamma(4) train sizes, 671,585 in all."""
    rng = np.random.default_rng(seed)
    raw = np.clip(rng.gamma(4.0, EMNIST_TRAIN / EMNIST_WRITERS / 4.0, EMNIST_WRITERS), 10, 450)
    train = np.clip(np.round(raw * EMNIST_TRAIN / raw.sum()).astype(int), 10, 450)
    diff = EMNIST_TRAIN - int(train.sum())  # exact total: the rounding leaves a few
    inner = np.flatnonzero((train > 10) & (train < 450))[: abs(diff)]
    train[inner] += np.sign(diff)
    test = np.maximum(1, np.round(train * EMNIST_TEST / EMNIST_TRAIN).astype(int))
    return list(zip(train.tolist(), test.tolist(), strict=True))


def _read_emnist(sample: Path, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    with h5py.File(sample / f"fed_emnist_{split}.h5", "r") as f:
        ex = f["examples"]
        return [(ex[c]["pixels"][()], ex[c]["label"][()]) for c in sorted(ex)]


def write_emnist_full(out: Path, sample: Path, level: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    sizes = emnist_sizes(seed)
    source = rng.integers(0, 10**9, size=len(sizes))
    out.mkdir(parents=True, exist_ok=True)
    for split_idx, split in enumerate(("train", "test")):
        real = _read_emnist(sample, split)
        with h5py.File(out / f"fed_emnist_{split}.h5", "w") as f:
            group = f.create_group("examples")
            for i, sz in enumerate(sizes):
                n = sz[split_idx]
                px, lab = real[source[i] % len(real)]
                pick = rng.integers(0, len(lab), size=n)
                g = group.create_group(f"f{i:04d}_{i % 100:02d}")
                gz = {"compression": "gzip", "compression_opts": level}
                chunks = (max(1, (n + 1) // 2), 14, 28)
                g.create_dataset("pixels", data=px[pick], chunks=chunks, shuffle=True, **gz)
                g.create_dataset("label", data=lab[pick], chunks=(n,), **gz)


def _read_roles(sample: Path, split: str) -> dict[str, list[bytes]]:
    with h5py.File(sample / f"shakespeare_{split}.h5", "r") as f:
        return {c: list(f["examples"][c]["snippets"][()]) for c in sorted(f["examples"])}


def _write_snippets(path: Path, clients: dict[str, list[bytes]], level: int) -> None:
    with h5py.File(path, "w") as f:
        group = f.create_group("examples")
        for cid in sorted(clients):
            raw = clients[cid]
            arr = np.array(raw, dtype=f"|S{max(1, *(len(b) for b in raw))}")
            group.create_group(cid).create_dataset(
                "snippets", data=arr, chunks=arr.shape, compression="gzip", compression_opts=level
            )


def write_shakespeare_full(out: Path, sample: Path, level: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    train, test = _read_roles(sample, "train"), _read_roles(sample, "test")
    names = sorted(train)
    roles_train, roles_test = {}, {}
    for i in range(SHAKESPEARE_ROLES):
        name = names[int(rng.integers(len(names)))]
        cid = f"PLAY_{i:03d}_{name}"
        if i < SHAKESPEARE_BIG:
            roles_train[cid], roles_test[cid] = train[name], test[name]
        else:  # a small role: 1 to 3 train snippets, 1 test snippet
            k = int(rng.integers(1, 4))
            roles_train[cid], roles_test[cid] = train[name][:k], test[name][:1]
    out.mkdir(parents=True, exist_ok=True)
    _write_snippets(out / "shakespeare_train.h5", roles_train, level)
    _write_snippets(out / "shakespeare_test.h5", roles_test, level)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/full_size"))
    parser.add_argument("--shared", type=Path, default=SHARED, help="the samples' folder")
    parser.add_argument("--level", type=int, default=9, help="gzip level (TFF's files: 9)")
    parser.add_argument("--only", choices=("emnist", "shakespeare"), default=None)
    args = parser.parse_args()
    if args.only != "shakespeare":
        t = time.perf_counter()
        write_emnist_full(args.out / "emnist", args.shared / "femnist_sample", args.level)
        print(f"emnist: {args.out / 'emnist'} in {time.perf_counter() - t:.0f} s")
    if args.only != "emnist":
        t = time.perf_counter()
        write_shakespeare_full(args.out / "shakespeare", args.shared / "shakespeare_sample",
                               args.level)  # fmt: skip
        print(f"shakespeare: {args.out / 'shakespeare'} in {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
