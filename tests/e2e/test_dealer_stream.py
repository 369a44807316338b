"""Issue 13.1: a small data owner beside a large one. The small party's only dealer material is
its data mask; party 0 waits for the small party's published data before it reads its own
correction stream, which is far larger than the socket buffers. Before the fix the dealer held
the small mask back (it was below the batch size) while its single writer blocked on party 0's
full socket: the run stalled until the receive timeout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROWS, SMALL, FEATURES = 20_000, 40, 50


def _write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    header = ",".join([*(f"f{i}" for i in range(x.shape[1])), "target"])
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=header, comments="",
               fmt="%.4f")


def _scenario(tmp_path: Path, epochs: int) -> Path:
    rng = np.random.default_rng(5)  # public test data
    w = rng.standard_normal(FEATURES)
    for name, rows in (("big", ROWS), ("small", SMALL), ("test", 200)):
        x = rng.standard_normal((rows, FEATURES))
        y = (x @ w + 0.5 * rng.standard_normal(rows) > 0).astype(float)
        _write_csv(tmp_path / f"{name}.csv", x, y)
    path = tmp_path / "unequal.toml"
    path.write_text(f"""
name = "unequal"
seed = 1
[model]
kind = "logistic"
[train]
epochs = {epochs}
batch_size = 512
learning_rate = 0.5
[data]
partition = "horizontal"
label = "target"
[[party]]
name = "big"
data = "big.csv"
[[party]]
name = "small"
data = "small.csv"
[evaluate]
data = "test.csv"
[network]
timeout_s = 20
""")
    return path


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_small_party_beside_a_large_one_finishes(tmp_path: Path, run_launch) -> None:
    result = run_launch(_scenario(tmp_path, epochs=6), timeout=240)
    assert result.rc == 0, result.logs()
    report = json.loads((result.out / "report.json").read_text())
    # Party 0's correction stream is tens of MB, far beyond the socket buffers.
    assert report["dealer"]["bytes_sent"] > 30e6, report["dealer"]
    assert report["metrics"]["accuracy"] > 0.9, report["metrics"]
