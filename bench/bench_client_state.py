"""Benchmark: the client-state store (:class:`fedp13n.state.ClientStateStore`), issue 20.

For ``--clients`` clients (default 3,400: EMNIST-62's writers) it measures two stores:

* ``head``: the EMNIST CNN's head, the last Linear layer of ``emnist_conv_dropout``
  (``fc2.weight`` 62x128 + ``fc2.bias`` 62: 7,998 float32 per client);
* ``model``: the whole ``emnist_conv_dropout`` model (every parameter: 1,206,590 float32).

Each store is filled (every client written once, ``--fill-batch`` clients per commit,
the generations pruned as they go), then ``--rounds`` rounds run as a training run
would: read ``--per-round`` sampled clients' state (``get``), write it back changed
(``put``), ``commit(r)`` and ``prune(r - 2)`` (two checkpoints kept), in a fresh process
(so its RSS is the store's, not the fill's). Reported: the
files' apparent and allocated size, the process's RSS (anonymous and file-backed: the mapped
pages of the rows read, which the kernel may reclaim) before and after
opening the filled store and after the rounds, and per round the median and max seconds
of the reads, the writes + commit, and the bytes of a generation.

Run: ``python bench/bench_client_state.py`` (writes ~16 GB for the whole-model store under
``--dir``, deleted afterwards; minutes) or ``--clients 200`` (a smoke run, seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedp13n.models import emnist_conv_dropout
from fedp13n.state import ClientStateStore, state_spec


def rss() -> dict[str, int]:
    """This process's resident memory (bytes): total, anonymous and file-backed."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def disk(folder: Path) -> tuple[int, int]:
    """Apparent and allocated bytes of the files under ``folder``."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), sum(p.stat().st_blocks * 512 for p in files)


def mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def specs() -> dict[str, dict[str, torch.Tensor]]:
    model = emnist_conv_dropout(num_classes=62)
    params = dict(model.named_parameters())
    return {"head": {n: p for n, p in params.items() if n.startswith("fc2.")}, "model": params}


def fill(store: ClientStateStore, tensors: dict[str, torch.Tensor], batch: int) -> float:
    """Write every client once (values of ``tensors``), ``batch`` clients per commit."""
    start = time.perf_counter()
    state = {n: t.detach().clone() for n, t in tensors.items()}
    r = store.round_num
    for i in range(0, len(store.client_ids), batch):
        for c in store.client_ids[i : i + batch]:
            store.put(c, state)
        r += 1
        store.commit(r)
        store.prune(r)
    return time.perf_counter() - start


def rounds(store: ClientStateStore, n_rounds: int, per_round: int, seed: int) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {"read": [], "write+commit": [], "generation bytes": []}
    for _ in range(n_rounds):
        picked = [store.client_ids[i] for i in rng.choice(len(store.client_ids), per_round, False)]
        t0 = time.perf_counter()
        states = {c: store.get(c) for c in picked}
        t1 = time.perf_counter()
        for c, s in states.items():
            store.put(c, {n: t + 1 for n, t in s.items()})
        r = store.round_num + 1
        gen = store.commit(r)
        store.prune(r - 2)
        t2 = time.perf_counter()
        out["read"].append(t1 - t0)
        out["write+commit"].append(t2 - t1)
        out["generation bytes"].append(gen.stat().st_size)
        out.setdefault("rss", []).append(rss())
    return out


def bench(name: str, tensors: dict, args: argparse.Namespace, root: Path) -> None:
    folder = root / name
    ids = [f"f{i:04d}_00" for i in range(args.clients)]
    row = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"\n== {name}: {len(tensors)} tensors, {row:,} bytes per client, {len(ids)} clients")
    store = ClientStateStore.create(folder, ids, state_spec(tensors))
    print(f"empty store on disk: apparent {mb(disk(folder)[0])}, allocated {mb(disk(folder)[1])}")
    seconds = fill(store, tensors, args.fill_batch)
    store.close()
    apparent, allocated = disk(folder)
    print(f"filled ({seconds:.1f} s): apparent {mb(apparent)}, allocated {mb(allocated)}, "
          f"index.json {mb((folder / 'index.json').stat().st_size)}")  # fmt: skip
    # the reads and writes in a fresh process: its RSS is the store's, not the fill's
    child = subprocess.run(
        [sys.executable, __file__, "--measure", str(folder), "--rounds", str(args.rounds),
         "--per-round", str(args.per_round), "--seed", str(args.seed)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    m = json.loads(child.stdout.splitlines()[-1])
    for when in ("before open", "after open", "after rounds"):
        r = m[when]
        print(f"RSS {when}: {mb(r['VmRSS'])} (anon {mb(r['RssAnon'])}, file {mb(r['RssFile'])})")
    peak = max(r["RssAnon"] for r in m["rss"]) - m["before open"]["RssAnon"]
    print(f"RssAnon peak over open, measured at the end of each round (the round's states "
          f"still referenced): +{mb(peak)}")  # fmt: skip
    for kind in ("VmRSS", "RssAnon", "RssFile"):
        grown = m["after rounds"][kind] - m["before open"][kind]
        print(f"{kind} growth, open + {args.rounds} rounds: {mb(grown)}")
    for key in ("read", "write+commit"):
        v = m[key]
        print(f"per round, {key} of {args.per_round} clients: median {statistics.median(v):.4f} s, "
              f"max {max(v):.4f} s")  # fmt: skip
    print(f"generation file per round: {mb(statistics.median(m['generation bytes']))}")
    shutil.rmtree(folder)


def measure(args: argparse.Namespace) -> None:
    """The child process: open the filled store, run the rounds, print JSON."""
    before = rss()
    store = ClientStateStore.open(args.measure)
    opened = rss()
    out = rounds(store, args.rounds, args.per_round, args.seed)
    out.update({"before open": before, "after open": opened, "after rounds": rss()})
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=3400)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--fill-batch", type=int, default=50)
    parser.add_argument("--which", choices=("head", "model", "both"), default="both")
    parser.add_argument("--dir", default=None, help="where the stores go (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.measure:
        return measure(args)
    root = Path(tempfile.mkdtemp(prefix="client-state-", dir=args.dir))
    print(f"stores under {root}; {os.cpu_count()} CPUs; torch {torch.__version__}")
    try:
        for name, tensors in specs().items():
            if args.which in (name, "both"):
                bench(name, tensors, args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
