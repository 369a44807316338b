"""Released model, end to end: a run through the real processes (via the Python API,
``from mpc import run``) writes model.pt and model.onnx whose predictions on the raw test rows
equal the secure run's own (weights.npz with the reference forward pass), and ``mpc-predict``
applies the model to a CSV; report.json lists the input columns under ``features``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mpc import run
from mpc.config.scenario import load_evaluation, load_scenario
from mpc.core.errors import ConfigError
from mpc.learn.model import load
from mpc.learn.reference import predict

ort = pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
@pytest.mark.timeout(180)
@pytest.mark.parametrize("scenario,epochs", [("two-clinics", 2), ("digits-mlp", 1)])
def test_exported_models_match_the_secure_run(scenario: str, epochs: int,
                                              tmp_path: Path) -> None:
    path = ROOT / "scenarios" / f"{scenario}.toml"
    result = run(path, out=tmp_path / "run", overrides={"train.epochs": epochs})
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert result.report == report and result.metrics == report["metrics"]
    s = load_scenario(path)
    test = load_evaluation(s)
    assert test is not None and report["features"] == list(test.feature_names)
    npz = np.load(tmp_path / "run" / "weights.npz")
    weights = [npz[k] for k in sorted(npz.files) if k.startswith("w")]
    biases = [npz["b" + k[1:]] for k in sorted(npz.files) if k.startswith("w")]
    want = predict(s.model.kind, weights, test.features, biases)
    with torch.no_grad():
        got_pt = load(tmp_path / "run" / "model.pt")(torch.as_tensor(test.features)).numpy()
    session = ort.InferenceSession(str(tmp_path / "run" / "model.onnx"))
    got_onnx = session.run(None, {"features": test.features.astype(np.float32)})[0]
    np.testing.assert_allclose(got_pt, want, atol=1e-12)
    np.testing.assert_allclose(result.predict(test.features), want, atol=1e-12)
    np.testing.assert_allclose(got_onnx, want, rtol=1e-4, atol=1e-5)
    # mpc-predict on the raw test CSV (extra columns such as the label are ignored)
    out = tmp_path / "preds.csv"
    proc = subprocess.run([sys.executable, "-m", "parties.predict", str(tmp_path / "run"),
                           str(s.evaluate.data), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    table = np.genfromtxt(out, delimiter=",", names=True)
    if s.model.kind == "logistic":
        np.testing.assert_allclose(table["p1"], want[:, 0], atol=1e-12)
        accuracy = float(np.mean(table["prediction"] == test.labels))
    else:
        accuracy = float(np.mean(table["prediction"] == want.argmax(1)))
        assert accuracy == 1.0
        accuracy = float(np.mean(table["prediction"] == test.labels))
    assert accuracy == pytest.approx(report["metrics"]["accuracy"])


@pytest.mark.e2e
def test_api_refuses_a_bad_scenario_before_starting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'train.epoch'"):
        run(ROOT / "scenarios" / "two-clinics.toml", out=tmp_path / "x",
            overrides=["train.epoch=1"])
    assert not (tmp_path / "x" / "logs").exists()
