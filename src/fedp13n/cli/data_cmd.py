"""``fedp13n data``: inspect (``info``) and fetch (``download``) federated datasets.

User errors (missing files, bad data, failed downloads, unknown names) print one line and
exit with code 2, without a traceback.
"""

from __future__ import annotations

import warnings

import typer

from fedp13n.cli.errors import fail, given_path
from fedp13n.data.names import DATASET_NAMES

app = typer.Typer(
    help="Federated datasets: inspect and download.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

_DATASET = typer.Option(
    "emnist", "--dataset", "-d", help=f"Dataset name: {', '.join(DATASET_NAMES)}."
)
_DATA_DIR = typer.Option(  # folders are str, not Path: Path("") is "." (given_path)
    None,
    "--data-dir",
    help="Directory with already-downloaded files (TFF h5 files, LEAF train/ and test/, "
    "or emnist_all.sqlite).  \\[default: download into the cache]",
    metavar="PATH",
)
_CACHE_DIR = typer.Option(
    None,
    "--cache-dir",
    help="Cache root.  \\[default: $FEDP13N_CACHE or ~/.cache/fedp13n]",
    metavar="PATH",
)
_URL = typer.Option(
    None, "--url", help="Download from this URL instead of TFF's.  \\[default: TFF's URL]"
)
_ONLY_DIGITS = typer.Option(
    False,
    "--only-digits",
    help="The 10-class digits-only variant (EMNIST).  \\[default: all 62 classes]",
    show_default=False,
)
_NUM_CLIENTS = typer.Option(
    None,
    "--num-clients",
    help="Keep a seeded random subset of this many clients.  \\[default: all]",
)
_SEED = typer.Option(
    0, "--seed", help="Seed of the client subset (--num-clients) / synthetic data."
)


def _refuse_own(dataset: str, command: str) -> None:
    """``data info`` / ``data download`` with one's own ``"module:function"``: say what the
    command covers and how to see one's own data (exit 2), not "unknown dataset"."""
    from fedp13n.utils.imports import is_import_path

    if is_import_path(dataset):
        fail(
            f"'data {command}' {'describes' if command == 'info' else 'fetches'} fedp13n's "
            f"built-in data sets only ({', '.join(DATASET_NAMES)}); {dataset!r} is your own "
            f"'module:function': `fedp13n run --dataset {dataset}` logs its clients, examples "
            "and classes before any training (its 'num_classes:' and 'data:' lines), or call "
            "the function in Python."
        )


def _sources(dataset: str, data_dir: str | None, cache_dir: str | None, url: str | None):
    """``--data-dir`` and ``--cache-dir`` as Paths, refusing what would be silently ignored
    or mean the current folder: an empty folder or URL, ``--data-dir`` for generated data."""
    data = given_path(data_dir, "--data-dir", "the folder holding the files, or leave it out")
    cache = given_path(cache_dir, "--cache-dir", "a cache folder, or leave it out")
    if url is not None and not url.strip():
        fail("--url is empty; give the archive's URL, or leave --url out for TFF's.")
    if dataset == "synthetic" and data is not None:
        fail("--data-dir reads files, but 'synthetic' is generated; drop --data-dir.")
    return data, cache


def _load(dataset, data_dir, cache_dir, url, only_digits, num_clients, seed, console):
    from fedp13n.data.cache import CacheRebuiltWarning
    from fedp13n.data.datasets import download_notice, load_dataset
    from fedp13n.data.validate import DataError

    data_dir, cache_dir = _sources(dataset, data_dir, cache_dir, url)

    notice = download_notice(dataset, data_dir, cache_dir, url, only_digits)
    if notice is not None:  # a large download must not start unannounced
        typer.echo(notice, err=True)
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CacheRebuiltWarning)
            try:
                return load_dataset(
                    dataset,
                    data_dir=data_dir,
                    cache_dir=cache_dir,
                    url=url,
                    only_digits=only_digits,
                    num_clients=num_clients,
                    seed=seed,
                    progress=console.is_terminal,
                )
            except DataError as e:
                fail(" ".join(str(e).split()))
    finally:  # after the recording ends: a warning re-issued inside it was recorded again,
        for w in caught:  # an endless loop (a NaN pixel's numpy warning hung `data info`)
            if issubclass(w.category, CacheRebuiltWarning):  # one line, not a traceback
                typer.secho(f"warning: {w.message}", err=True, fg=typer.colors.YELLOW)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _label_chars(dataset: str, only_digits: bool) -> list[str]:
    """What each label stands for, one entry per class (its length: the classes)."""
    if dataset.startswith("shakespeare"):
        from fedp13n.data import shakespeare as sh

        chars = ["<pad>", *(repr(c)[1:-1] for c in sh.VOCAB), "<oov>", "<bos>", "<eos>"]
        assert len(chars) == sh.VOCAB_SIZE
        return chars
    from fedp13n.data.validate import LABEL_CHARS, NUM_CLASSES, NUM_DIGIT_CLASSES

    return list(LABEL_CHARS[: NUM_DIGIT_CLASSES if only_digits else NUM_CLASSES])


@app.command()
def info(
    dataset: str = _DATASET,
    data_dir: str | None = _DATA_DIR,
    cache_dir: str | None = _CACHE_DIR,
    url: str | None = _URL,
    only_digits: bool = _ONLY_DIGITS,
    num_clients: int | None = _NUM_CLIENTS,
    seed: int = _SEED,
) -> None:
    """Print clients, examples, per-client sizes and the class histogram of a dataset."""
    from rich.console import Console
    from rich.table import Table

    from fedp13n.data.stats import QUANTILES, summarize

    _refuse_own(dataset, "info")
    if seed != 0 and num_clients is None and dataset != "synthetic":
        fail(
            f"--seed {seed} chooses the client subset of --num-clients, but none is asked "
            f"for ({dataset!r} is read whole): add --num-clients N, or drop --seed."
        )
    console = Console()
    train, test = _load(dataset, data_dir, cache_dir, url, only_digits, num_clients, seed, console)
    chars = _label_chars(dataset, only_digits)
    s = summarize(train, test, len(chars))

    overview = Table(title=f"Dataset {dataset}" + (" (digits only)" if only_digits else ""))
    overview.add_column("")
    overview.add_column("value", justify="right")
    overview.add_row("clients", f"{s.num_clients:,}")
    overview.add_row("train examples", f"{s.train_examples:,}")
    overview.add_row("test examples", f"{s.test_examples:,}")
    overview.add_row("features stored as", s.pixel_dtype)
    if train.path is not None:
        overview.add_row("cache", str(train.path.parent))
    console.print(overview)

    sizes = Table(title="Examples per client")
    sizes.add_column("split")
    for q in QUANTILES:
        sizes.add_column(
            {0.0: "min", 0.5: "median", 1.0: "max"}.get(q, f"p{q * 100:g}"), justify="right"
        )
    sizes.add_column("mean", justify="right")
    for name, qs, mean in (
        ("train", s.train_size_quantiles, s.train_mean_size),
        ("test", s.test_size_quantiles, s.test_mean_size),
    ):
        sizes.add_row(name, *(f"{v:g}" for v in qs), f"{mean:.1f}")
    console.print(sizes)

    per_position = train.y.ndim > 1
    hist = Table(title="Target histogram (all positions)" if per_position else "Class histogram")
    for col in ("label", "char", "train", "test", "% of train"):
        hist.add_column(col, justify="right")
    total = max(int(s.train_class_counts.sum()), 1)
    for label, (a, b) in enumerate(zip(s.train_class_counts, s.test_class_counts, strict=True)):
        char = chars[label] if label < len(chars) else "?"
        hist.add_row(str(label), char, f"{a:,}", f"{b:,}", f"{100 * a / total:.2f}")
    console.print(hist)


@app.command()
def download(
    dataset: str = _DATASET,
    data_dir: str | None = _DATA_DIR,
    cache_dir: str | None = _CACHE_DIR,
    url: str | None = _URL,
    only_digits: bool = _ONLY_DIGITS,
) -> None:
    """Download (or convert from --data-dir) a dataset into the local cache."""
    from rich.console import Console

    _refuse_own(dataset, "download")
    console = Console()
    train, test = _load(dataset, data_dir, cache_dir, url, only_digits, None, 0, console)
    where = train.path.parent if train.path is not None else "(not cached: generated)"
    console.print(
        f"{dataset}: {len(train):,} clients, {train.num_examples:,} train and "
        f"{test.num_examples:,} test examples, cached in {where}"
    )
