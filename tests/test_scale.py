"""Scale: what a full-size federation (TFF's 3,400 EMNIST writers) must not pay twice.

``bench/README.md`` ("Full-size federations") has the measurements these guard.
"""

import tracemalloc

import numpy as np

from fedp13n.data.cache import cached
from fedp13n.data.client_data import ClientData

N_CLIENTS, PER_CLIENT = 40, 50  # 2,000 examples: 1.5 MiB of uint8 pixels per split


def _split(fill: int) -> ClientData:
    n = N_CLIENTS * PER_CLIENT
    x = np.full((n, 28, 28), fill, dtype=np.uint8)
    y = (np.arange(n) % 62).astype(np.int16)
    offsets = np.arange(0, n + 1, PER_CLIENT, dtype=np.int64)
    return ClientData([f"w{i:03d}" for i in range(N_CLIENTS)], x, y, offsets)


def test_first_load_holds_one_copy_of_the_data(tmp_path):
    """``cached`` builds, saves and loads back the cached arrays: the built ones must be
    gone before the cached ones are read (on TFF's full EMNIST-62 holding both took the
    first load's peak RSS from 1.4 to 2.0 GiB). numpy reports its buffers to tracemalloc,
    so the peak of traced memory counts every array alive at once."""
    data_bytes = 2 * N_CLIENTS * PER_CLIENT * (28 * 28 + 2)  # train + test, x and y
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        train, test = cached(tmp_path, "entry", lambda: (_split(255), _split(7)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert train.path is not None and int(train.x[0, 0, 0]) == 255 and int(test.x[-1, 0, 0]) == 7
    # one copy (plus the hashing buffers and metadata), where the old code held two
    assert data_bytes < peak < 1.5 * data_bytes, (peak, data_bytes)
