"""The numbers of a fixed-seed run, recorded before the design refactor (issue 9).

``tests/data/golden_synthetic.json`` was written by ``tests/data/record_golden.py`` on the
code as it was before the refactor; every value here must stay bit-identical: the FedAvg
rows (every column but the timings), the whole ``per_client.csv`` and every byte of the
global weights.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


def _recorder():
    spec = importlib.util.spec_from_file_location("record_golden", DATA / "record_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "extra", [[], ["--device", "cpu", "--engine", "off", "--precision", "fp32"]], ids=str
)
def test_synthetic_run_is_bit_identical_to_the_recorded_one(tmp_path, extra):
    expected = json.loads((DATA / "golden_synthetic.json").read_text())
    # The experiment's default pipeline is now TFF's (issue 10); the recorded run used the
    # per-epoch one, fedp13n's only pipeline before.
    got = _recorder().run_golden(["--client-pipeline", "epochs", *extra], tmp_path / "run")
    assert got["fedavg_metrics"] == expected["fedavg_metrics"]
    assert got["per_client_head"] == expected["per_client_head"]
    assert got["per_client_sha256"] == expected["per_client_sha256"]
    assert got["global_weights_sha256"] == expected["global_weights_sha256"]
