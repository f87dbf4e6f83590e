"""Source lines of ``src/`` and the longest functions (the design issue's measure).

python bench/code_stats.py [--top 10]
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    total, functions = 0, []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        total += len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                functions.append((length, f"{path.relative_to(SRC)}:{node.name}"))
    print(f"src/: {total} lines in {len(list(SRC.rglob('*.py')))} files")
    for length, name in sorted(functions, reverse=True)[: args.top]:
        print(f"{length:5d}  {name}")


if __name__ == "__main__":
    main()
