"""Partitioners: a centralized labelled data set ``(x, y)`` becomes federated clients.

Three schemes, each deterministic for a ``seed`` (a ``numpy.random.default_rng(seed)``
draws every random choice, in a fixed order), each returning one array of example
positions per client, sorted (a client is a set of examples; the order its examples
train in is the training pipeline's business):

* ``"iid"`` (:func:`partition_iid`): a random permutation of the examples cut into
  ``num_clients`` consecutive parts (``numpy.array_split``): sizes differ by at most one.
* ``"dirichlet"`` (:func:`partition_dirichlet`): label skew with a Dirichlet prior
  (Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution for
  Federated Visual Classification"), in the per-class form that NIID-Bench (Li et al.
  2022), FedML, FL-bench and PFLlib implement: for each class ``k`` in increasing order,
  its examples (shuffled) are split among the clients by proportions
  ``p ~ Dirichlet(alpha, ..., alpha)`` (one draw per class); a client that already holds
  ``len(y) / num_clients`` examples or more gets proportion 0 for the classes still to
  come (those implementations' balancing rule), the rest are renormalised, and the class
  is cut at ``floor(cumsum(p) * n_k)``. Small ``alpha`` (0.1) gives each client few
  labels; large ``alpha`` (1000) nearly the global label mix. If some client ends with
  fewer than ``min_size`` examples the whole draw is repeated (the generator goes on), at
  most ``max_tries`` times; then a one-line ``ValueError`` says what to change.
* ``"shards"`` (:func:`partition_shards`): McMahan et al. 2017's pathological non-IID
  split: the examples sorted by label (stable, so a label's examples keep their order),
  cut into ``num_clients * shards_per_client`` consecutive shards (sizes differ by at
  most one when they do not divide the examples: ``numpy.array_split``), and each client
  gets ``shards_per_client`` shards drawn at random without replacement. With
  ``shards_per_client=2`` most clients see two labels.

:func:`partition` builds the federated ``(train, test)`` pair fedp13n's experiments need
(:func:`federate`): the same client ids in both, each client's examples split into its
train and test part at random (a generator derived from ``seed`` and ``"test-split"``,
so the client partition does not depend on ``test_fraction``), with
``round(test_fraction * n)`` (halves up) test examples, at least 1 and at most ``n - 1``
when ``test_fraction > 0``. Client ids are ``client_00``, ``client_01``, ... (zero-padded,
so sorted ids are in client order).

One line turns CIFAR-10 as torchvision reads it into 100 clients::

    train, test = partition(ds.data, ds.targets, 100, "dirichlet", alpha=0.3, seed=1)

Bad input (an ``alpha`` that is not positive, more clients than examples, non-integer
labels for a label-based scheme, ``x`` and ``y`` of different lengths, ...) is a
one-line ``ValueError`` (a ``TypeError`` for a wrong type) naming the problem and the fix.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedp13n.data.client_data import ClientData, as_numpy
from fedp13n.utils.checks import check_fraction, check_positive_int
from fedp13n.utils.checks import check_seed as _int_seed
from fedp13n.utils.seeding import derive_rng

#: The partition schemes of :func:`partition`.
PARTITION_SCHEMES = ("iid", "dirichlet", "shards")
#: Dirichlet concentration when none is given (a common choice in FL-bench / PFLlib papers).
DEFAULT_ALPHA = 0.5
#: Shards per client of McMahan et al. 2017 (200 shards of 300 for 100 clients).
DEFAULT_SHARDS_PER_CLIENT = 2
#: Fewest examples a Dirichlet client may get (NIID-Bench's ``min_require_size``).
DEFAULT_MIN_SIZE = 10
#: Dirichlet draws tried before giving up on ``min_size``.
DEFAULT_MAX_TRIES = 1000
#: Share of each client's examples that goes to its test data.
DEFAULT_TEST_FRACTION = 0.2


# -- input checks --------------------------------------------------------------------------------
def _check_seed(seed: Any) -> int:
    """``seed`` as an int >= 0 (what ``numpy.random.default_rng`` takes), or a one-line
    error naming it (numpy's own says only "expected non-negative integer")."""
    seed = _int_seed(seed)
    if seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed}.")
    return seed


def _check_clients(num_clients: Any, num_examples: int) -> int:
    num_clients = check_positive_int("num_clients", num_clients)
    if num_examples == 0:
        raise ValueError("there are no examples to partition (x and y are empty).")
    if num_clients > num_examples:
        raise ValueError(
            f"num_clients is {num_clients} but there are only {num_examples} examples; "
            f"choose at most {num_examples} clients."
        )
    return num_clients


def _class_labels(y: Any) -> np.ndarray:
    """``y`` as 1-D integer class labels (what a label-based scheme splits by)."""
    y = as_numpy(y)
    if y.ndim != 1:
        raise ValueError(
            f"labels must be 1-D (one class per example), got shape {y.shape}; e.g. y.ravel()."
        )
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        raise ValueError(
            f"a label-based scheme needs integer class labels, got dtype {y.dtype}; give "
            "y.astype(np.int64) if they are whole numbers, or use scheme 'iid'."
        )
    return y.astype(np.int64, copy=False)


def _check_values(x: np.ndarray, y: np.ndarray) -> None:
    """No NaN or infinite features or labels, no negative integer label (labels are class
    indices): what training would otherwise meet rounds later, as a one-line ValueError."""
    for arr, name in ((x, "x"), (y, "y")):
        if np.issubdtype(arr.dtype, np.inexact) and not np.isfinite(arr).all():
            row = int(np.argmax(~np.isfinite(arr).reshape(len(arr), -1).all(axis=1)))
            raise ValueError(
                f"{name} holds NaN or infinite values (first at example {row}); clean or "
                "drop those examples first."
            )
    if np.issubdtype(y.dtype, np.signedinteger) and len(y) and int(y.min()) < 0:
        raise ValueError(
            f"y holds label {int(y.min())}; labels are class indices 0..num_classes-1 "
            "(relabel, e.g. np.unique(y, return_inverse=True)[1])."
        )


# -- the schemes: one array of example positions per client ---------------------------------------
def partition_iid(num_examples: int, num_clients: int, *, seed: int = 0) -> list[np.ndarray]:
    """``num_clients`` random parts of ``range(num_examples)`` whose sizes differ by at
    most one (a permutation cut by ``numpy.array_split``), each sorted."""
    num_examples = int(num_examples)
    num_clients = _check_clients(num_clients, num_examples)
    rng = np.random.default_rng(_check_seed(seed))
    return [np.sort(p) for p in np.array_split(rng.permutation(num_examples), num_clients)]


def partition_dirichlet(
    y: Any,
    num_clients: int,
    *,
    alpha: float = DEFAULT_ALPHA,
    min_size: int = DEFAULT_MIN_SIZE,
    seed: int = 0,
    max_tries: int = DEFAULT_MAX_TRIES,
) -> list[np.ndarray]:
    """Label skew by per-class Dirichlet(``alpha``) proportions (the module docstring
    gives the exact scheme); every client gets at least ``min_size`` examples, redrawing
    the whole partition up to ``max_tries`` times."""
    y = _class_labels(y)
    num_clients = _check_clients(num_clients, len(y))
    alpha = _check_alpha(alpha)
    min_size = check_positive_int("min_size", min_size)
    max_tries = check_positive_int("max_tries", max_tries)
    if num_clients * min_size > len(y):
        raise ValueError(
            f"{num_clients} clients of at least min_size={min_size} examples need "
            f"{num_clients * min_size}, but there are {len(y)}; lower min_size or num_clients."
        )
    rng = np.random.default_rng(_check_seed(seed))
    by_class = [np.flatnonzero(y == k) for k in np.unique(y)]
    for _ in range(max_tries):
        parts = _dirichlet_draw(by_class, len(y), num_clients, alpha, rng)
        if parts is not None and min(len(p) for p in parts) >= min_size:
            return [np.sort(p) for p in parts]
    raise ValueError(
        f"Dirichlet(alpha={alpha}) gave some client fewer than min_size={min_size} examples "
        f"in {max_tries} draws of {num_clients} clients from {len(y)} examples; raise alpha, "
        "lower min_size or use fewer clients."
    )


def _check_alpha(alpha: Any) -> float:
    ok = isinstance(alpha, (int, float, np.number)) and not isinstance(alpha, bool)
    if not ok or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(
            f"alpha must be a finite number > 0 (small: few labels per client, large: "
            f"nearly IID), got {alpha!r}."
        )
    return float(alpha)


def _dirichlet_draw(
    by_class: list[np.ndarray],
    n: int,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
) -> list[np.ndarray] | None:
    """One draw of the per-class Dirichlet split (None: a class's proportions vanished
    for every client still open, e.g. underflow at a tiny alpha; the caller redraws)."""
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    sizes = np.zeros(num_clients, dtype=np.int64)
    for idx in by_class:
        idx = rng.permutation(idx)
        p = rng.dirichlet(np.full(num_clients, alpha))
        p = np.where(sizes < n / num_clients, p, 0.0)
        total = p.sum()
        if not total > 0:
            return None
        cuts = (np.cumsum(p / total) * len(idx)).astype(np.int64)[:-1]
        for j, chunk in enumerate(np.split(idx, cuts)):
            parts[j].append(chunk)
            sizes[j] += len(chunk)
    return [np.concatenate(c) if c else np.zeros(0, dtype=np.int64) for c in parts]


def partition_shards(
    y: Any,
    num_clients: int,
    *,
    shards_per_client: int = DEFAULT_SHARDS_PER_CLIENT,
    seed: int = 0,
) -> list[np.ndarray]:
    """McMahan et al. 2017's shards: sorted by label, cut into ``num_clients *
    shards_per_client`` shards, ``shards_per_client`` random shards per client."""
    y = _class_labels(y)
    num_clients = _check_clients(num_clients, len(y))
    shards_per_client = check_positive_int("shards_per_client", shards_per_client)
    num_shards = num_clients * shards_per_client
    if num_shards > len(y):
        raise ValueError(
            f"{num_clients} clients x {shards_per_client} shards = {num_shards} shards, more "
            f"than the {len(y)} examples (a shard would be empty); lower shards_per_client or "
            "num_clients."
        )
    rng = np.random.default_rng(_check_seed(seed))
    shards = np.array_split(np.argsort(y, kind="stable"), num_shards)
    order = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([shards[s] for s in row])) for row in order]


# -- the federated (train, test) pair -------------------------------------------------------------
def client_ids_for(num_clients: int) -> list[str]:
    """``client_00``, ``client_01``, ...: zero-padded so that sorted ids keep client order."""
    width = len(str(num_clients - 1))
    return [f"client_{i:0{width}d}" for i in range(num_clients)]


def num_test_examples(n: int, test_fraction: float) -> int:
    """A client's test examples out of ``n``: ``round(test_fraction * n)`` (halves up),
    at least 1 and at most ``n - 1`` when ``test_fraction > 0``; 0 when it is 0."""
    if test_fraction == 0:
        return 0
    return min(max(1, math.floor(test_fraction * n + 0.5)), n - 1)


def federate(
    x: Any,
    y: Any,
    parts: list[np.ndarray],
    *,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
) -> tuple[ClientData, ClientData]:
    """Federated ``(train, test)`` ClientData from example positions per client (what the
    ``partition_*`` functions return): the same client ids (:func:`client_ids_for`) in
    both, each client's examples split at random (:func:`num_test_examples` of them for
    test) by a generator derived from ``seed`` and ``"test-split"``; both parts keep the
    examples' original order."""
    x, y = as_numpy(x), as_numpy(y)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}; they must match.")
    test_fraction = check_fraction("test_fraction", test_fraction)
    rng = derive_rng(_check_seed(seed), "test-split")
    ids = client_ids_for(len(parts))
    train, test = [], []
    for cid, part in zip(ids, parts, strict=True):
        part = np.asarray(part, dtype=np.int64)
        if test_fraction > 0 and len(part) < 2:
            raise ValueError(
                f"{cid} has {len(part)} example(s), too few to split into train and test; "
                "use fewer clients (or test_fraction=0)."
            )
        held_out = np.zeros(len(part), dtype=bool)
        held_out[rng.permutation(len(part))[: num_test_examples(len(part), test_fraction)]] = True
        train.append((cid, x[part[~held_out]], y[part[~held_out]]))
        test.append((cid, x[part[held_out]], y[part[held_out]]))
    return ClientData.from_clients(train), ClientData.from_clients(test)


def partition(
    x: Any,
    y: Any,
    num_clients: int,
    scheme: str = "dirichlet",
    *,
    alpha: float | None = None,
    shards_per_client: int | None = None,
    min_size: int | None = None,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
) -> tuple[ClientData, ClientData]:
    """A centralized labelled data set as federated ``(train, test)`` ClientData.

    ``scheme``: ``"iid"``, ``"dirichlet"`` (``alpha``, default 0.5; ``min_size``, default
    10) or ``"shards"`` (``shards_per_client``, default 2); see the module docstring for
    each and for the train / test split (``test_fraction`` of every client, seeded).
    ``x``: features, one row per example (numpy arrays, torch tensors, lists); ``y``:
    labels (integers for the label-based schemes). A setting of another scheme is a
    ``ValueError``.
    """
    x, y = as_numpy(x), as_numpy(y)
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(
            f"x and y need one row per example, got shapes {x.shape} and {y.shape} (a "
            "single value); give arrays (e.g. x of shape (n, features), y of shape (n,))."
        )
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}; they must match.")
    _check_values(x, y)
    if scheme not in PARTITION_SCHEMES:
        raise ValueError(f"scheme must be one of {PARTITION_SCHEMES}, got {scheme!r}.")
    given = {"alpha": alpha, "min_size": min_size, "shards_per_client": shards_per_client}
    own = {"iid": (), "dirichlet": ("alpha", "min_size"), "shards": ("shards_per_client",)}
    for key, value in given.items():
        if value is not None and key not in own[scheme]:
            owner = next(s for s, keys in own.items() if key in keys)
            raise ValueError(f"{key} applies to scheme {owner!r}, not {scheme!r}.")
    settings = {k: v for k, v in given.items() if v is not None}  # the rest: the defaults
    if scheme == "iid":
        parts = partition_iid(len(y), num_clients, seed=seed)
    elif scheme == "dirichlet":
        parts = partition_dirichlet(y, num_clients, **settings, seed=seed)
    else:
        parts = partition_shards(y, num_clients, **settings, seed=seed)
    return federate(x, y, parts, test_fraction=test_fraction, seed=seed)
