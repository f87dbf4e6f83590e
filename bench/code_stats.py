"""Source lines of ``src/`` and the longest functions (the design issue's measure).

python bench/code_stats.py [--top 10] [--code]

``--code``: function lengths without their docstrings (the lines of code).
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument(
        "--code", action="store_true", help="function lengths without their docstrings"
    )
    args = parser.parse_args()
    total, functions = 0, []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        total += len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if args.code:
                    length -= _docstring_lines(node)
                functions.append((length, f"{path.relative_to(SRC)}:{node.name}"))
    print(f"src/: {total} lines in {len(list(SRC.rglob('*.py')))} files")
    for length, name in sorted(functions, reverse=True)[: args.top]:
        print(f"{length:5d}  {name}")


def _docstring_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    first = node.body[0]
    if ast.get_docstring(node, clean=False) is None or not isinstance(first, ast.Expr):
        return 0
    return first.end_lineno - first.lineno + 1


if __name__ == "__main__":
    main()
