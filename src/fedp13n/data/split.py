"""TFF's split of the clients into global-model (FedAvg) clients and personalization clients.

Follows ``_get_emnist_datasets`` in TFF's personalization example
(``tensorflow_federated/python/examples/personalization/emnist_p13n_main.py``, the setup of
Jiang et al. 2019, "Improving Federated Learning Personalization via Model Agnostic Meta
Learning")::

    client_ids = list(np.random.RandomState(seed=42).permutation(emnist_train.client_ids))
    federated_train_data = [... for c in client_ids[:2500]]
    federated_p13n_data = [... for c in client_ids[2500:]]

``emnist_train.client_ids`` is already sorted there (TFF's ``HDF5ClientData`` and
``SqlClientData`` both store ``sorted(...)`` ids), so the recipe is: sort the ids as strings,
permute *the ids themselves* with the legacy ``RandomState(42).permutation``, take the first
2,500 for FedAvg and the remaining 900 (of EMNIST-62's 3,400) for personalization. Here the
personalization part is "the next ``num_personalization``" so that smaller samples (the
286-writer sample, synthetic data) can use smaller sizes; with 3,400 ids and the defaults it
is exactly TFF's ``client_ids[2500:]``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

from fedp13n.utils.checks import check_id_list

#: TFF's sizes for federated EMNIST-62 (3,400 writers).
TFF_NUM_TRAIN = 2500
TFF_NUM_PERSONALIZATION = 900
TFF_SPLIT_SEED = 42
#: The fewest clients a split can have: one for FedAvg, one for personalization.
MIN_CLIENTS = 2


def split_sizes(
    num_clients: int, num_train: int | None = None, num_personalization: int | None = None
) -> tuple[int, int]:
    """Split sizes for ``num_clients`` clients; unset sizes follow TFF.

    Both unset: TFF's 2,500 / 900 when there are at least 3,400 clients, else the same
    proportions (the 286-writer sample splits 210 / 76). One unset: the rest of the
    clients. Sizes that do not fit are a ``ValueError`` naming both numbers and sizes that
    fit; fewer than :data:`MIN_CLIENTS` clients are a ``ValueError`` naming the minimum.
    """
    total = TFF_NUM_TRAIN + TFF_NUM_PERSONALIZATION
    if num_clients < MIN_CLIENTS:
        raise ValueError(
            f"the dataset has {num_clients} client{'' if num_clients == 1 else 's'}, too few "
            f"for a split: it needs at least {MIN_CLIENTS} (1 training and 1 personalization "
            "client)."
        )
    if num_train is None and num_personalization is None:
        if num_clients >= total:
            return TFF_NUM_TRAIN, TFF_NUM_PERSONALIZATION
        num_train = max(1, round(num_clients * TFF_NUM_TRAIN / total))
        num_personalization = num_clients - num_train
    elif num_train is None:
        num_train = num_clients - num_personalization
    elif num_personalization is None:
        num_personalization = num_clients - num_train
    if num_train < 1 or num_personalization < 1 or num_train + num_personalization > num_clients:
        suggested = min(max(1, round(num_clients * TFF_NUM_TRAIN / total)), num_clients - 1)
        raise ValueError(
            f"the dataset has {num_clients} clients, which cannot be split into {num_train} "
            f"training and {num_personalization} personalization clients; choose sizes that "
            f"add up to at most {num_clients} (e.g. num_train={suggested} and "
            f"num_personalization={num_clients - suggested}, TFF's 2500:900 proportions)."
        )
    return num_train, num_personalization


def split_clients(
    client_ids: Iterable[str],
    num_train: int = TFF_NUM_TRAIN,
    num_personalization: int = TFF_NUM_PERSONALIZATION,
    seed: int = TFF_SPLIT_SEED,
) -> tuple[list[str], list[str]]:
    """Split client ids into (FedAvg clients, personalization clients) the way TFF does.

    Sorting first makes the split a function of the *set* of ids, not of the order in which
    a loader happened to list them, exactly as in TFF where ``client_ids`` come sorted.
    Clients beyond ``num_train + num_personalization`` are left out of both parts.

    Raises:
        ValueError: on duplicate ids, negative sizes, or sizes that need more clients than
            there are (the message names both numbers and suggests sizes that fit).
    """
    ids = [str(c) for c in check_id_list("client_ids", client_ids)]
    if len(set(ids)) != len(ids):
        dup = sorted(c for c, k in Counter(ids).items() if k > 1)[:5]
        raise ValueError(f"duplicate client ids {dup}: each client id must appear once.")
    for name, value in (("num_train", num_train), ("num_personalization", num_personalization)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
    n = len(ids)
    if num_train + num_personalization > n:
        suggested_train = round(n * TFF_NUM_TRAIN / (TFF_NUM_TRAIN + TFF_NUM_PERSONALIZATION))
        raise ValueError(
            f"the split needs num_train + num_personalization = {num_train} + "
            f"{num_personalization} = {num_train + num_personalization} clients but there are "
            f"only {n}. Use smaller sizes, e.g. num_train={suggested_train} and "
            f"num_personalization={n - suggested_train} (TFF's 2500:900 proportions)."
        )
    if n == 0:
        return [], []
    # Exactly TFF's call: permute the sorted ids (a 1-D string array) with the legacy
    # generator. The permutation of the array equals indexing it with permutation(n).
    permuted = np.random.RandomState(seed=seed).permutation(np.array(sorted(ids)))
    permuted_ids = [str(c) for c in permuted]
    train = permuted_ids[:num_train]
    personalization = permuted_ids[num_train : num_train + num_personalization]
    return train, personalization
