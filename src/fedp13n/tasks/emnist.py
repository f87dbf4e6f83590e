"""Task ``emnist``: TFF's federated EMNIST through :func:`fedp13n.data.datasets.load_dataset`
(its sources ``emnist``, ``emnist-sqlite``, ``leaf``, ``synthetic``, each checked as
EMNIST's 28x28 pixels and labels 0..61 where it loads), 62 classes or 10 with
``only_digits`` (TFF's ``emnist.load_data(only_digits=...)``)."""

from __future__ import annotations

from typing import Any


def load(
    source: str,
    *,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    only_digits: bool = False,
    synthetic_clients: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> tuple[Any, Any]:
    """The (train, test) ClientData of data source ``source``."""
    from fedp13n.data.datasets import load_dataset

    return load_dataset(
        source,
        data_dir=data_dir,
        cache_dir=cache_dir,
        only_digits=only_digits,
        num_clients=synthetic_clients if source == "synthetic" else None,
        seed=seed,
        progress=progress,
    )


def notice(
    source: str, *, data_dir: str | None = None, cache_dir: str | None = None,
    only_digits: bool = False,
) -> str | None:  # fmt: skip
    """What will be downloaded before ``source`` loads, or None."""
    from fedp13n.data.datasets import download_notice

    return download_notice(source, data_dir, cache_dir, None, only_digits)


def num_classes(*, only_digits: bool = False) -> int:
    """62 (digits, upper- and lower-case letters), or 10 with ``only_digits``."""
    return 10 if only_digits else 62
