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
    first load's peak RSS from 1,416 to 1,976 MiB). numpy reports its buffers to tracemalloc,
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


def _counted_run(data_dir, out_dir, monkeypatch) -> dict[str, int]:
    """A 2-round CLI run (3 clients a round, 2 evaluated) on ``data_dir``, counting the
    h5 files opened and the client datasets made."""
    import h5py
    from typer.testing import CliRunner

    from fedp13n.cli.main import app

    counts = {"h5_opens": 0, "datasets": 0}
    real_file, real_dataset = h5py.File, ClientData.create_dataset

    def opened(*args, **kwargs):
        counts["h5_opens"] += 1
        return real_file(*args, **kwargs)

    def made(self, *args, **kwargs):
        counts["datasets"] += 1
        return real_dataset(self, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", opened)
    monkeypatch.setattr(ClientData, "create_dataset", made)
    args = ["run", "--data-dir", str(data_dir), "--cache-dir", str(out_dir / "cache"),
            "--model", "full_data_sets:tiny_image", "--rounds", "2", "--clients-per-round",
            "3", "--local-epochs", "1", "--num-global-eval-clients", "2",
            "--num-eval-clients", "2", "--p13n-epochs", "1", "--strategy", "sgd",
            "--executor", "in-process", "--no-progress", "--no-report",
            "--output-dir", str(out_dir / "run")]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    monkeypatch.undo()
    return counts


def test_a_run_reads_the_h5_files_once_and_makes_datasets_per_sampled_client(tmp_path, monkeypatch):
    """Ten times the writers, the same work outside the first load: TFF's two h5 files
    opened once each (then the cache), and client datasets made only for the sampled
    and evaluated clients (never all clients up front, never per client per round)."""
    from full_data_sets import write_emnist

    counts = {}
    for n in (20, 200):
        sizes = {f"f{i:04d}_00": (6, 2) for i in range(n)}
        write_emnist(tmp_path / f"h5_{n}", sizes)
        counts[n] = _counted_run(tmp_path / f"h5_{n}", tmp_path / f"out_{n}", monkeypatch)
    assert counts[20]["h5_opens"] == counts[200]["h5_opens"] == 2
    assert counts[20]["datasets"] == counts[200]["datasets"] < 40


def test_reading_tffs_h5_holds_one_copy_of_the_pixels(tmp_path):
    """``load_h5_file`` learns every client's rows from the metadata first and reads each
    client straight into one array: the per-client arrays and their concatenation are
    never alive together (full EMNIST-62's first load: peak RSS 1,416 -> 968 MiB)."""
    from full_data_sets import write_emnist

    from fedp13n.data.h5 import load_h5_file

    writers = {f"f{i:04d}_00": (20, 1) for i in range(200)}  # 4,000 train examples
    write_emnist(tmp_path, writers)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        train = load_h5_file(tmp_path / "fed_emnist_train.h5")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    data_bytes = train.x.nbytes + train.y.nbytes
    assert train.x.dtype == np.uint8 and len(train) == 200 and len(train.y) == 4000
    assert data_bytes < peak < 1.5 * data_bytes, (peak, data_bytes)
