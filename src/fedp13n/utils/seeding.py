"""Derive every random choice from (seed, purpose, round, client id).

Why: results must be identical whatever the executor and number of workers, so no
random stream may depend on the order in which clients happen to run. Each consumer
derives its own independent seed from a key path with ``numpy.random.SeedSequence``.
"""

from __future__ import annotations

import hashlib

import numpy as np


def _key_to_int(key: object) -> int:
    if isinstance(key, (int, np.integer)) and key >= 0:
        return int(key)
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed determined by ``seed`` and the key path (strings, ints)."""
    ss = np.random.SeedSequence([_key_to_int(seed), *(_key_to_int(k) for k in keys)])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def derive_rng(seed: int, *keys: object) -> np.random.Generator:
    """A numpy Generator seeded by :func:`derive_seed`."""
    return np.random.default_rng(derive_seed(seed, *keys))
