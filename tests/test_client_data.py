import numpy as np
import pytest
import torch

from fedp13n.data.client_data import UINT8_TO_UNIT, ClientData, ClientDataset


def _three_clients():
    rng = np.random.default_rng(0)
    return ClientData.from_clients(
        [
            ("a", rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), np.array([0, 1, 2])),
            ("b", rng.integers(0, 256, (0, 28, 28), dtype=np.uint8), np.zeros(0, np.int64)),
            ("c", rng.integers(0, 256, (2, 28, 28), dtype=np.uint8), np.array([61, 5])),
        ]
    )


def test_offsets_and_views():
    cd = _three_clients()
    assert cd.client_ids == ("a", "b", "c")
    assert list(cd.offsets) == [0, 3, 3, 5]
    assert list(cd.client_sizes()) == [3, 0, 2]
    ds = cd.create_dataset("c")
    assert list(ds.y) == [61, 5]
    assert np.shares_memory(ds.x, cd.x)  # a view, not a copy
    assert len(cd.create_dataset("b")) == 0


def test_uint8_pixels_convert_to_tff_floats():
    # TFF stores float32(k / 255); the lookup must reproduce those bits exactly.
    k = np.arange(256, dtype=np.uint8)
    expected = np.float32(k.astype(np.float64) / 255.0)
    assert np.array_equal(UINT8_TO_UNIT, expected)
    assert UINT8_TO_UNIT[255] == 1.0 and UINT8_TO_UNIT[0] == 0.0
    ds = ClientDataset(k.reshape(256, 1), np.zeros(256, dtype=np.int16))
    x, y = ds.tensors()
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[:, 0], torch.from_numpy(expected))


def test_batches_cover_every_example_once_when_shuffled():
    ds = ClientDataset(np.arange(47, dtype=np.float32).reshape(47, 1), np.arange(47))
    seen = []
    sizes = []
    for xb, yb in ds.batches(20, shuffle=True, generator=np.random.default_rng(3)):
        assert torch.equal(xb[:, 0].long(), yb)  # x and y stay aligned
        seen.extend(yb.tolist())
        sizes.append(len(yb))
    assert sizes == [20, 20, 7]
    assert sorted(seen) == list(range(47)) and seen != list(range(47))


def test_save_load_roundtrip(tmp_path):
    cd = _three_clients()
    cd.save(tmp_path / "cache")
    for mmap in (False, True):
        back = ClientData.load(tmp_path / "cache", mmap=mmap)
        assert back.client_ids == cd.client_ids
        assert np.array_equal(back.x, cd.x) and np.array_equal(back.y, cd.y)
        assert back.path == tmp_path / "cache"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp dir left


def test_subset_keeps_requested_order():
    cd = _three_clients()
    sub = cd.subset(["c", "a"])
    assert sub.client_ids == ("c", "a")
    assert list(sub.create_dataset("c").y) == [61, 5]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(client_ids=["a", "a"], offsets=[0, 1, 2]), "duplicate client ids"),
        (dict(client_ids=["a"], offsets=[0, 1]), "offsets must start at 0 and end"),
        (dict(client_ids=["a", "b"], offsets=[0, 2]), "one entry per client"),
    ],
)
def test_bad_construction_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClientData(x=np.zeros((2, 1)), y=np.zeros(2), **kwargs)


def test_unknown_client_names_the_id():
    with pytest.raises(KeyError, match="unknown client id 'zz'"):
        _three_clients().create_dataset("zz")
