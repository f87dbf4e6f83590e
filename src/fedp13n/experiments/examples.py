"""The example configurations shipped inside the package (``fedp13n/examples/*.toml``).

``fedp13n run --config demo`` and ``fedp13n sweep table1_sample``: a bare name (no folder,
no ``.toml``) that is not a file or folder where fedp13n runs names one of them, so a
``pip install fedp13n`` has examples to run. ``fedp13n examples`` lists them.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedp13n.experiments.config import ConfigError

#: Where the examples are installed (package data, see pyproject.toml).
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"


def example_names() -> list[str]:
    """The shipped examples' names (their file names without ``.toml``), sorted."""
    return sorted(p.stem for p in EXAMPLES_DIR.glob("*.toml"))


def example_summary(name: str) -> str:
    """The first line of the example's opening comment."""
    for line in (EXAMPLES_DIR / f"{name}.toml").read_text(encoding="utf-8").splitlines():
        return line.lstrip("#").strip()
    return ""


def _is_bare_name(text: str) -> bool:
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return (
        text not in ("", ".", "..")
        and not any(s in text for s in separators)
        and not text.lower().endswith(".toml")
    )


def config_path(value: str | os.PathLike, what: str = "--config") -> Path:
    """``value`` as the path of a TOML file: itself, or the shipped example it names (a
    bare name that is not a file or folder here). An unknown bare name is a one-line
    ConfigError listing the examples; ``what`` names the argument in it."""
    text = os.fspath(value)
    if not text.strip():
        raise ConfigError(
            f"{what} is empty; give a TOML file or an example name: {', '.join(example_names())}."
        )
    path = Path(text)
    if not _is_bare_name(text) or path.exists():
        return path
    example = EXAMPLES_DIR / f"{text}.toml"
    if example.is_file():
        return example
    raise ConfigError(
        f"{what} {text!r} is not a file, nor one of the shipped examples; give a TOML file "
        f"or an example name: {', '.join(example_names())}."
    )
