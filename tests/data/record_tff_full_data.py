"""Record TFF's own Shakespeare preprocessing of the awkward roles of
``tests/full_data_sets.py`` (the small roles of TFF's full data set that the sample leaves
out: one train snippet, an empty only test snippet, all snippets empty, empty snippets
among others, a 6,835-character snippet, 10 test characters), for
``tests/test_full_data_clients.py`` (which must not need TFF).

Writes the roles in TFF's h5 layout to a temporary folder and runs TFF 0.87's
``char_prediction_preprocessing.create_preprocess_fn`` with TFF's evaluation spec on each
client's ``snippets`` as read back from the h5 file (``tff_examples`` of
``record_tff_shakespeare.py``: ``tensorflow_federated/python/simulation/baselines/
shakespeare/``). Prints JSON: per split and role, the number of examples and the sums of
the x and y ids. Run with the TFF venv:

    /work/main/.tff-venv/bin/python tests/data/record_tff_full_data.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import h5py

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import full_data_sets  # noqa: E402
from record_tff_shakespeare import tff_examples  # noqa: E402


def main() -> None:
    out: dict = {"tff": __import__("tensorflow_federated").__version__}
    with tempfile.TemporaryDirectory() as tmp:
        roles = full_data_sets.write_shakespeare(Path(tmp))
        for split, name in (("train", "shakespeare_train.h5"), ("test", "shakespeare_test.h5")):
            out[split] = {}
            with h5py.File(Path(tmp) / name, "r") as f:
                for cid in sorted(roles):
                    if "NORMAL" in cid:
                        continue
                    x, y = tff_examples(f["examples"][cid]["snippets"][()])
                    out[split][cid] = [len(x), int(x.sum()), int(y.sum())]
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
