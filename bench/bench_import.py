"""Start-up cost: ``import fedp13n`` and ``fedp13n --help``, in fresh processes.

    python bench/bench_import.py [--before OLD_SRC_DIR] [--repeat 5]

``--before`` points at the ``src/`` of another checkout (e.g. ``git archive 61931b0 src``
unpacked somewhere) to measure both in the same run, interleaved; the figures are the
best of ``--repeat`` (start-up time only grows under load).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent / "src"
COMMANDS = {
    "import fedp13n": ["-c", "import fedp13n"],
    "fedp13n --help": ["-m", "fedp13n.cli.main", "--help"],
}


def seconds(src: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    trees = {"now": HERE} | ({"before": args.before} if args.before else {})
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.repeat):
        for label, src in trees.items():
            for name, cmd in COMMANDS.items():
                t = seconds(src, cmd)
                best[(label, name)] = min(best.get((label, name), t), t)
    for name in COMMANDS:
        line = f"{name:16s} now {best[('now', name)]:.2f} s"
        if args.before:
            b = best[("before", name)]
            line += f"   before {b:.2f} s   x{b / best[('now', name)]:.1f} faster"
        print(line)


if __name__ == "__main__":
    main()
