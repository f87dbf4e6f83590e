"""Benchmark: load a full-size federated EMNIST-62 from the local cache.

Target (the issue): the full data set (3,400 clients, 671,585 train + 77,483 test =
749,068 examples) fits in under 1 GiB of resident memory and loads from the cache in
under 5 seconds. The full download is not needed: a cache entry of exactly that size is
built by tiling the real sample (``../shared/data/femnist_sample``; random uint8 pixels
if it is absent), then each measurement runs in a fresh Python process that imports
fedp13n, loads the entry and touches every byte, and reports wall time and peak RSS
(``VmHWM``, else ``resource.getrusage``), both with the arrays read into RAM and
memory-mapped. The page cache is warm (the entry was just written), which is the usual
situation for repeated experiment runs.

Run: ``python bench/bench_data_load.py`` (full size, ~20 s) or
``python bench/bench_data_load.py --clients 50 --train 5000 --test 500`` (smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fedp13n.data.cache import save_cached
from fedp13n.data.client_data import ClientData

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared/data/femnist_sample"
KEY = "emnist-62-tiled"
GIB = 1 << 30

_CHILD = r"""
import json, resource, sys, time


def peak_rss():
    # VmHWM is this process's own high-water mark; ru_maxrss on Linux also counts the
    # parent's memory at fork time (it survives exec), which would inflate the numbers.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


t0 = time.perf_counter()
from fedp13n.data.cache import load_cached
import numpy as np
t_import = time.perf_counter() - t0
rss_import = peak_rss()
t1 = time.perf_counter()
train, test = load_cached(sys.argv[1], sys.argv[2], mmap=sys.argv[3] == "1")
checksum = int(train.x.sum(dtype=np.uint64)) + int(test.x.sum(dtype=np.uint64))  # touch all
t_load = time.perf_counter() - t1
print(json.dumps({
    "import_s": t_import, "load_s": t_load, "rss_after_import": rss_import,
    "peak_rss": peak_rss(),
    "clients": len(train), "train": train.num_examples, "test": test.num_examples,
    "checksum": checksum,
}))
"""


def _sizes(total: int, clients: int, pattern: np.ndarray) -> np.ndarray:
    """``clients`` sizes that sum to ``total``, shaped like the sample's (cycled, scaled)."""
    base = np.resize(pattern.astype(np.float64), clients)
    sizes = np.maximum(1, np.floor(base * total / base.sum())).astype(np.int64)
    diff = total - int(sizes.sum())
    order = np.argsort(-sizes)  # adjust the largest clients first
    i = 0
    while diff:
        j = order[i % clients]
        step = 1 if diff > 0 else -1
        if sizes[j] + step >= 1:
            sizes[j] += step
            diff -= step
        i += 1
    return sizes


def _tiled(source: ClientData | None, n: int, sizes: np.ndarray, prefix: str, rng) -> ClientData:
    if source is not None:
        reps = -(-n // source.num_examples)
        x = np.tile(source.x, (reps, 1, 1))[:n]
        y = np.tile(source.y, reps)[:n]
    else:
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 62, n).astype(np.int16)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    ids = [f"{prefix}{i:04d}" for i in range(len(sizes))]
    return ClientData(ids, x, y, offsets)


def build(root: Path, clients: int, n_train: int, n_test: int) -> str:
    rng = np.random.default_rng(0)
    if (SAMPLE / "fed_emnist_train.h5").is_file():
        from fedp13n.data.h5 import load_h5_dir

        s_train, s_test = load_h5_dir(SAMPLE)
        src = "tiled from the real sample (286 writers)"
        tr_pat, te_pat = s_train.client_sizes(), s_test.client_sizes()
    else:
        s_train = s_test = None
        src = "random uint8 pixels (sample absent)"
        tr_pat = te_pat = rng.integers(50, 400, 286)
    train = _tiled(s_train, n_train, _sizes(n_train, clients, tr_pat), "w", rng)
    test = _tiled(s_test, n_test, _sizes(n_test, clients, te_pat), "w", rng)
    save_cached(root, KEY, train, test, source={"bench": src})
    return src


def measure(root: Path, mmap: bool) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root), KEY, "1" if mmap else "0"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=3400)
    p.add_argument("--train", type=int, default=671_585)
    p.add_argument("--test", type=int, default=77_483)
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per mode")
    p.add_argument("--workdir", type=Path, default=None, help="keep the cache entry here")
    args = p.parse_args()

    import torch

    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        root = args.workdir or Path(tmp)
        t = time.perf_counter()
        src = build(root, args.clients, args.train, args.test)
        size = sum(f.stat().st_size for f in (root / KEY).rglob("*") if f.is_file())
        print(
            f"cache entry: {args.clients} clients, {args.train:,} + {args.test:,} examples, "
            f"{src}; {size / 2**20:.0f} MiB on disk, built in {time.perf_counter() - t:.1f} s"
        )
        results = {}
        for mmap in (False, True):
            runs = [measure(root, mmap) for _ in range(args.repeats)]
            r = runs[0]
            assert (r["clients"], r["train"], r["test"]) == (args.clients, args.train, args.test)
            load = float(np.median([x["load_s"] for x in runs]))
            peak = max(x["peak_rss"] for x in runs)
            base = float(np.median([x["rss_after_import"] for x in runs]))
            results[mmap] = (load, peak)
            mode = "memory-mapped" if mmap else "loaded into RAM"
            print(
                f"{mode:>16}: load + touch every byte {load:.2f} s (median of {len(runs)}), "
                f"peak RSS {peak / 2**20:.0f} MiB (of which {base / 2**20:.0f} MiB after "
                f"importing fedp13n/torch)"
            )
    ok = True
    for mmap, (load, peak) in results.items():
        passed = load < 5.0 and peak < GIB
        ok = ok and passed
        mode = "mmap=True " if mmap else "mmap=False"
        print(
            f"{'PASS' if passed else 'FAIL'} {mode}: load {load:.2f} s (< 5 s), peak RSS "
            f"{peak / GIB:.2f} GiB (< 1 GiB)"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
