import re
from pathlib import Path

import numpy as np
import pytest

from fedp13n.data.split import split_clients, split_sizes

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/data/femnist_sample"

# 20 NIST-style writer ids, deliberately not in sorted order.
IDS = [
    "f0412_32", "f0011_14", "f3999_02", "f0180_27", "f2203_11",
    "f0001_41", "f1024_07", "f0777_33", "f3100_18", "f0452_00",
    "f2871_45", "f0009_09", "f1500_25", "f0333_12", "f2010_39",
    "f0088_21", "f3450_04", "f1999_16", "f0600_30", "f2600_08",
]  # fmt: skip


def _fisher_yates_like_randomstate(items, seed):
    """Plain-loop reference: legacy RandomState.shuffle draws j in [0, i] for i = n-1..1."""
    out = list(items)
    rs = np.random.RandomState(seed)
    for i in range(len(out) - 1, 0, -1):
        j = int(rs.randint(0, i + 1))
        out[i], out[j] = out[j], out[i]
    return out


def test_split_equals_tff_recipe_on_a_known_list():
    train, p13n = split_clients(IDS, num_train=12, num_personalization=8)
    # TFF: np.random.RandomState(seed=42).permutation(sorted client_ids).
    tff_order = [str(c) for c in np.random.RandomState(seed=42).permutation(sorted(IDS))]
    assert train == tff_order[:12] and p13n == tff_order[12:]
    # Same thing via permuted indices, and via an explicit Fisher-Yates loop.
    idx = np.random.RandomState(42).permutation(len(IDS))
    assert train + p13n == [sorted(IDS)[i] for i in idx]
    assert train + p13n == _fisher_yates_like_randomstate(sorted(IDS), 42)
    # Sorting first: the input order does not matter.
    assert split_clients(IDS[::-1], 12, 8) == (train, p13n)
    assert set(train).isdisjoint(p13n) and set(train) | set(p13n) == set(IDS)


def test_smaller_parts_are_prefixes_and_other_seeds_differ():
    full_train, full_p13n = split_clients(IDS, 12, 8)
    train, p13n = split_clients(IDS, 10, 5)
    assert train == full_train[:10]
    assert p13n == (full_train + full_p13n)[10:15]  # "the next num_personalization"
    assert split_clients(IDS, 12, 8, seed=7) != (full_train, full_p13n)
    assert split_clients([], 0, 0) == ([], [])


def test_sizes_beyond_the_clients_name_both_numbers():
    with pytest.raises(ValueError, match=r"2500 \+ 900 = 3400 clients but there are only 20"):
        split_clients(IDS)
    with pytest.raises(ValueError, match="num_train=15 and num_personalization=5"):
        split_clients(IDS, 15, 6)
    with pytest.raises(ValueError, match="num_train must be a non-negative integer"):
        split_clients(IDS, -1, 2)
    with pytest.raises(ValueError, match="duplicate client ids"):
        split_clients(["a", "b", "a"], 1, 1)


def test_real_sample_splits_220_66():
    clients = SAMPLE / "clients.txt"
    if not clients.is_file():
        pytest.skip(f"real EMNIST sample not found at {SAMPLE}")
    ids = clients.read_text().split()
    assert len(ids) == 286
    train, p13n = split_clients(ids, num_train=220, num_personalization=66)
    assert len(train) == 220 and len(p13n) == 66
    assert set(train) | set(p13n) == set(ids)
    expected = np.random.RandomState(42).permutation(sorted(ids))
    assert train[:5] == [str(c) for c in expected[:5]]


def test_too_few_clients_for_a_split_name_the_minimum():
    for n in (0, 1):
        with pytest.raises(ValueError, match=f"has {n} clients?, too few .* at least 2"):
            split_sizes(n)
        with pytest.raises(ValueError, match="at least 2"):
            split_sizes(n, 1, 1)
    assert split_sizes(2) == (1, 1)


@pytest.mark.parametrize("n", range(2, 41))
def test_the_suggested_sizes_fit(n):
    with pytest.raises(ValueError) as e:
        split_sizes(n, n, None)  # no personalization clients left
    train, p13n = map(int, re.search(r"num_train=(\d+) and num_personalization=(\d+)",
                                     str(e.value)).groups())  # fmt: skip
    assert split_sizes(n, train, p13n) == (train, p13n)
