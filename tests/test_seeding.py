from fedp13n.utils.seeding import derive_rng, derive_seed


def test_derived_seeds_depend_on_every_key_and_nothing_else():
    a = derive_seed(42, "train", 3, "f0001_01")
    assert a == derive_seed(42, "train", 3, "f0001_01")
    others = {
        derive_seed(43, "train", 3, "f0001_01"),
        derive_seed(42, "p13n", 3, "f0001_01"),
        derive_seed(42, "train", 4, "f0001_01"),
        derive_seed(42, "train", 3, "f0001_02"),
    }
    assert a not in others and len(others) == 4
    assert 0 <= a < 2**63


def test_derived_rng_streams_reproduce():
    assert (
        derive_rng(1, "x").permutation(10).tolist() == derive_rng(1, "x").permutation(10).tolist()
    )
