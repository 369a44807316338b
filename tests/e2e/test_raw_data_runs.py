"""Raw data in, deployable model out, through the real processes: raw CSVs whose columns span 7
orders of magnitude, with ~5 % missing cells (horizontal: 3 parties of unequal size; vertical:
2 parties) are imputed and standardised jointly inside MPC (``data.missing = "mean"``), trained
with an intercept, and released on raw scale. Secure
accuracy is within 0.5 pp of the float64 reference, model.pt / model.onnx reproduce the secure
model on the raw test rows, and the statistics appear in no log, report or ledger unless the
reveal policy allows ``statistics``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mpc.learn.model import load
from mpc.learn.reference import predict

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.e2e

COLUMNS = ["income", "lab", "age", "ratio", "flag"]
SIZES = (90, 160, 50)


def _data(rows: int, seed: int = 9) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.column_stack([
        rng.normal(81234.5, 29876.5, rows),   # income ~1e5
        rng.normal(1523.25, 412.75, rows),    # lab value ~1e3
        rng.uniform(18, 95, rows).round(),    # age
        rng.normal(0.021, 0.008, rows),       # small ratio ~1e-2
        np.full(rows, 1.0),                   # a constant column
    ])
    z = (x[:, 0] - 8e4) / 3e4 - (x[:, 1] - 1500) / 400 + (x[:, 2] - 56) / 22 \
        + 2 * (x[:, 3] - 0.02) / 0.008 + 0.5
    return x, (z + rng.normal(0, 0.7, rows) > 0).astype(float)


def _write(path: Path, header: list[str], cols: list[np.ndarray]) -> None:
    rows = np.column_stack(cols)
    cell = lambda v: "" if np.isnan(v) else f"{v:.10g}"  # noqa: E731 - a missing cell is empty
    lines = [",".join(header)] + [",".join(cell(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def _scenario(tmp: Path, partition: str, reveal: str = "") -> tuple[Path, np.ndarray]:
    n = sum(SIZES)
    x, y = _data(n + 150)
    ids = np.arange(n + 150, dtype=float)
    _write(tmp / "test.csv", ["id", *COLUMNS, "target"], [ids[n:], x[n:], y[n:]])
    x, y, ids = x[:n], y[:n], ids[:n]
    x = x.copy()
    x[np.random.default_rng(4).random(x.shape) < 0.05] = np.nan  # ~5 % missing cells
    parties = []
    if partition == "horizontal":
        lo = 0
        for i, size in enumerate(SIZES):
            _write(tmp / f"h{i}.csv", [*COLUMNS, "target"], [x[lo:lo + size], y[lo:lo + size]])
            parties.append((f"hosp_{i}", f"h{i}.csv"))
            lo += size
        data = 'partition = "horizontal"\nlabel = "target"\nmissing = "mean"\n'
    else:
        _write(tmp / "v0.csv", ["id", *COLUMNS[:2], "target"], [ids, x[:, :2], y])
        _write(tmp / "v1.csv", ["id", *COLUMNS[2:]], [ids, x[:, 2:]])
        parties = [("bank_a", "v0.csv"), ("bank_b", "v1.csv")]
        data = ('partition = "vertical"\nlabel = "target"\nlabel_party = "bank_a"\n'
                'missing = "mean"\n')
    text = (f'name = "raw-{partition}"\nseed = 1\n[model]\nkind = "logistic"\n'
            '[train]\nepochs = 3\nbatch_size = 32\nlearning_rate = 0.5\n'
            f"[data]\n{data}"
            + "".join(f'[[party]]\nname = "{p}"\ndata = "{f}"\n' for p, f in parties)
            + '[evaluate]\ndata = "test.csv"\n' + reveal)
    (tmp / "s.toml").write_text(text)
    return tmp / "s.toml", x


def _secret_strings(x: np.ndarray) -> list[str]:
    """The joint statistics of the wide columns as they would be printed (5 digits)."""
    out = []
    for j in range(3):
        filled = np.where(np.isnan(x[:, j]), np.nanmean(x[:, j]), x[:, j])
        for v in (filled.mean(), filled.std()):
            out += [f"{v:.5g}", f"{v:.5g}".replace(".", "")[:5]]
    return [s for s in out if len(s) >= 4]


@pytest.mark.timeout(200)
@pytest.mark.parametrize("partition", ["horizontal", "vertical"])
def test_raw_data_end_to_end(partition: str, tmp_path: Path, run_launch) -> None:
    """Horizontal: the default policy, and no statistics anywhere. Vertical: the policy allows
    ``statistics`` to the launcher, and report.json and the ledger hold them."""
    allow = ('[reveal]\nallow = [{ what = "weights", to = "launcher" }, '
             '{ what = "intersection", to = "all" }, { what = "statistics", to = "launcher" }]\n')
    scenario, x = _scenario(tmp_path, partition, allow if partition == "vertical" else "")
    res = run_launch(scenario, "--reference", timeout=180)
    assert res.rc == 0, res.logs()
    report = json.loads((res.out / "report.json").read_text())
    secure, ref = report["metrics"]["accuracy"], report["reference"]["accuracy"]
    assert secure > 0.85 and abs(secure - ref) <= 0.005, (secure, ref)
    assert report["max_abs_output_diff"] < 0.02
    assert report["features"] == COLUMNS  # the intercept is not an input column

    test = np.genfromtxt(tmp_path / "test.csv", delimiter=",", skip_header=1)[:, 1:-1]
    npz = np.load(res.out / "weights.npz")
    want = predict("logistic", [npz["w"]], test, [npz["b"]])
    with torch.no_grad():
        got_pt = load(res.out / "model.pt")(torch.as_tensor(test)).numpy()
    got_onnx = ort.InferenceSession(str(res.out / "model.onnx")).run(
        None, {"features": test.astype(np.float32)})[0]
    np.testing.assert_allclose(got_pt, want, atol=1e-12)
    np.testing.assert_allclose(got_onnx, want, rtol=1e-4, atol=1e-5)
    assert npz["w"][4, 0] == 0  # the constant column, found without revealing it
    assert "data preparation (standardize=True) done" in res.logs()

    reveals = {(r["what"], r["name"]) for r in report["reveals"] if r["what"] != "intersection"}
    if partition == "horizontal":
        # No statistics anywhere: not in the report, the ledger, any log or the console.
        assert "statistics" not in report
        assert reveals == {("weights", "w"), ("weights", "b")}
        texts = [(res.out / "report.json").read_text(), res.logs()]
        for secret in _secret_strings(x):
            # at the start of a number, not inside another one's digits (a timing such as
            # 0.4537127440016775 holds "40016" by chance)
            found = re.compile(r"(?<![0-9])" + re.escape(secret))
            for text in texts:
                assert not found.search(text), secret
        return
    assert reveals == {("weights", "w"), ("weights", "b"), ("statistics", "mean"),
                       ("statistics", "std")}
    stats = report["statistics"]
    got_mu = np.array([stats["mean"][c] for c in COLUMNS])
    got_sd = np.array([stats["std"][c] for c in COLUMNS])
    filled = np.where(np.isnan(x), np.nanmean(x, 0), x)
    np.testing.assert_allclose(got_mu, np.nanmean(x, 0), rtol=1e-6, atol=1e-7)  # F_X = 24 bits
    np.testing.assert_allclose(got_sd, filled.std(0), rtol=1e-6, atol=1e-7)
    assert got_sd[4] == 0
