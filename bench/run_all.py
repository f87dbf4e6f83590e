"""Run every benchmark in ``bench/`` (``bench_*.py``) with its default settings, one after
another, each in its own Python process (so one's threads and memory do not affect the
next). Each script has its own smoke-run options (see its docstring). Exits non-zero if
any benchmark failed, after running all of them.

Run: ``python bench/run_all.py`` (what ``make bench`` does).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"\n===== {script.name}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        print(f"===== {script.name}: exit {rc}, {time.perf_counter() - start:.0f} s", flush=True)
        if rc != 0:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
