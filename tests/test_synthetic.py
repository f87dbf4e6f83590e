import numpy as np
import pytest

from fedp13n.data.synthetic import ALPHABET, SIZE, glyph_bank, make_synthetic_emnist

NUM_WRITERS = 60


@pytest.fixture(scope="module")
def data():
    return make_synthetic_emnist(NUM_WRITERS, seed=3)


def test_layout_shapes_dtypes_and_ranges(data):
    train, test = data
    assert train.client_ids == test.client_ids
    assert train.client_ids[:3] == ("synthetic_0000", "synthetic_0001", "synthetic_0002")
    assert len(train) == NUM_WRITERS
    for part in (train, test):
        assert part.x.dtype == np.uint8 and part.x.shape[1:] == (SIZE, SIZE)
        assert part.y.dtype == np.int16
        assert part.y.min() >= 0 and part.y.max() <= 61
    n_train, n_test = train.client_sizes(), test.client_sizes()
    total = n_train + n_test
    # Defaults: 60..140 examples per writer, 20% of them (rounded) held out for test.
    assert total.min() >= 60 and total.max() <= 140
    assert np.array_equal(n_test, [round(0.2 * n) for n in total])
    assert n_train.min() >= 1 and n_test.min() >= 1
    # TFF's convention: 255 (1.0) is the background, ink is dark. Most pixels are
    # background and every image has ink.
    assert np.mean(train.x == 255) > 0.6
    assert train.x.reshape(len(train.x), -1).min(axis=1).max() < 200


def test_digits_only_and_tiny_clients():
    train, test = make_synthetic_emnist(
        4, seed=0, num_classes=10, min_examples=2, max_examples=2, test_fraction=0.1
    )
    assert set(np.unique(np.concatenate([train.y, test.y]))) <= set(range(10))
    # 2 examples, 10% test: rounding gives 0, yet both parts keep one example.
    assert list(train.client_sizes()) == [1] * 4 and list(test.client_sizes()) == [1] * 4


def test_same_seed_same_bytes_other_seed_differs_and_prefix_is_stable():
    a_train, a_test = make_synthetic_emnist(5, seed=11)
    b_train, b_test = make_synthetic_emnist(5, seed=11)
    assert a_train.x.tobytes() == b_train.x.tobytes()
    assert a_train.y.tobytes() == b_train.y.tobytes()
    assert a_test.x.tobytes() == b_test.x.tobytes()
    c_train, _ = make_synthetic_emnist(5, seed=12)
    assert c_train.x.shape != a_train.x.shape or not np.array_equal(c_train.x, a_train.x)
    # Independent per-client streams: generating more writers leaves the first ones as is.
    more_train, more_test = make_synthetic_emnist(8, seed=11)
    for cid in a_train.client_ids:
        assert np.array_equal(more_train.create_dataset(cid).x, a_train.create_dataset(cid).x)
        assert np.array_equal(more_train.create_dataset(cid).y, a_train.create_dataset(cid).y)
        assert np.array_equal(more_test.create_dataset(cid).x, a_test.create_dataset(cid).x)


def test_writers_differ_in_style(data):
    train, _ = data
    # Amount of ink per image: if writers shared one style, writer means would scatter only
    # by their standard error; a one-way ANOVA F statistic near 1. Writers' stroke width,
    # size and darkness make it far larger.
    ink = 1.0 - train.x.reshape(len(train.x), -1).mean(axis=1) / 255.0
    groups = [ink[lo:hi] for lo, hi in zip(train.offsets[:-1], train.offsets[1:], strict=True)]
    grand = ink.mean()
    k, n = len(groups), len(ink)
    between = sum(len(g) * (g.mean() - grand) ** 2 for g in groups) / (k - 1)
    within = sum(((g - g.mean()) ** 2).sum() for g in groups) / (n - k)
    assert between / within > 10


def test_writers_differ_in_label_distribution(data):
    train, _ = data

    def mean_tv_to_pooled(labels, offsets):
        pooled = np.bincount(labels, minlength=62) / len(labels)
        tvs = []
        for lo, hi in zip(offsets[:-1], offsets[1:], strict=True):
            own = np.bincount(labels[lo:hi], minlength=62) / (hi - lo)
            tvs.append(0.5 * np.abs(own - pooled).sum())
        return float(np.mean(tvs))

    y = train.y.astype(np.int64)
    # Reference: the same labels dealt to writers at random (IID), same client sizes.
    shuffled = np.random.default_rng(0).permutation(y)
    non_iid = mean_tv_to_pooled(y, train.offsets)
    iid = mean_tv_to_pooled(shuffled, train.offsets)
    assert non_iid > iid + 0.15, (non_iid, iid)


def _nearest_centroid(sums, counts, x):
    valid = counts > 0
    centroids = sums[valid] / counts[valid, None]
    d = ((x[:, None, :] - centroids[None]) ** 2).sum(axis=-1)
    return np.flatnonzero(valid)[d.argmin(axis=1)]


def _flat(x):
    return x.reshape(len(x), -1).astype(np.float64) / 255.0


def _class_sums(x, y):
    sums = np.zeros((62, x.shape[1]))
    np.add.at(sums, y, x)
    return sums, np.bincount(y, minlength=62).astype(np.float64)


def test_glyphs_are_recognizable_and_personalization_helps(data):
    train, test = data
    g_sums, g_counts = _class_sums(_flat(train.x), train.y.astype(np.int64))
    global_acc, personal_acc, correct, seen = [], [], 0, 0
    for cid in train.client_ids:
        own, held = train.create_dataset(cid), test.create_dataset(cid)
        xt, yt = _flat(held.x), held.y.astype(np.int64)
        pred = _nearest_centroid(g_sums, g_counts, xt)
        global_acc.append(np.mean(pred == yt))
        correct += int(np.sum(pred == yt))
        seen += len(yt)
        # Personalized: the writer's own class means, shrunk toward the global ones
        # (2 pseudo-examples), so classes it never wrote in train fall back to global.
        l_sums, l_counts = _class_sums(_flat(own.x), own.y.astype(np.int64))
        g_means = g_sums / np.maximum(g_counts, 1)[:, None]
        pred = _nearest_centroid(l_sums + 2.0 * g_means, l_counts + 2.0 * (g_counts > 0), xt)
        personal_acc.append(np.mean(pred == yt))
    chance = 1 / 62
    assert correct / seen > 10 * chance  # measured 0.41 (seed 3)
    assert np.mean(personal_acc) > np.mean(global_acc) + 0.15  # measured 0.72 vs 0.41
    assert np.mean(np.array(personal_acc) > np.array(global_acc)) > 0.7


def test_glyph_bank_keeps_case_sizes():
    # Like NIST (and unlike bounding-box normalised MNIST) characters keep their size:
    # lowercase 'o', 'x', 's' are shorter than 'O', 'X', 'S' in every font. This also checks
    # that the bank follows the EMNIST label order of ALPHABET.
    bank = glyph_bank()
    assert bank.shape[1] == len(ALPHABET) == 62

    def ink_height(field):
        rows = np.flatnonzero(field.max(axis=1) > 0.3)
        return rows[-1] - rows[0] + 1

    for font in bank:
        for ch in "oxs":
            lower, upper = ALPHABET.index(ch), ALPHABET.index(ch.upper())
            assert ink_height(font[lower]) < 0.85 * ink_height(font[upper])
        # '1' and 'l' are as tall as a capital (digits and ascenders), 'o' is not.
        assert ink_height(font[ALPHABET.index("1")]) > ink_height(font[ALPHABET.index("o")])


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"num_clients": 0}, "num_clients"),
        ({"min_examples": 1}, "min_examples"),
        ({"min_examples": 50, "max_examples": 10}, "max_examples (10)"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"num_classes": 63}, "num_classes"),
        ({"label_concentration": 0.0}, "label_concentration"),
        ({"variant_probability": 1.5}, "variant_probability"),
    ],
)
def test_bad_arguments_are_named(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        make_synthetic_emnist(**kwargs)
