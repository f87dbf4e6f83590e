"""``fedp13n examples``: the example configurations shipped with fedp13n."""

from __future__ import annotations

import typer

from fedp13n.cli.errors import fail


def examples(
    name: str = typer.Argument(
        None, help="Print this example's TOML (to copy and edit) instead of the list."
    ),
) -> None:
    """List the shipped example configs (fedp13n run --config NAME), or print one."""
    from fedp13n.experiments.examples import EXAMPLES_DIR, example_names, example_summary

    if name is not None:
        if name not in example_names():
            fail(f"no example named {name!r}; the shipped examples: {', '.join(example_names())}.")
        typer.echo((EXAMPLES_DIR / f"{name}.toml").read_text(encoding="utf-8"), nl=False)
        return
    names = example_names()
    width = max(map(len, names))
    for n in names:
        typer.echo(f"{n:<{width}}  {example_summary(n)}")
    typer.echo(
        f"\n(in {EXAMPLES_DIR}) run one: fedp13n run --config demo; a sweep: fedp13n sweep "
        "table1_sample --output-dir DIR; copy one: fedp13n examples demo > my.toml"
    )


def register(app: typer.Typer) -> None:
    app.command("examples")(examples)
