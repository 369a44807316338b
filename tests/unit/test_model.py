"""Released-model artefacts (``mpc.learn.model``, ``parties.predict``): the torch module, the ONNX
graph (run with onnxruntime) and the plaintext reference compute the same function for every
model kind; bad model or data files end in a ConfigError naming file, line and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mpc.core.errors import ConfigError
from mpc.learn.model import export_onnx, load, load_spec, save, spec_from_run
from mpc.learn.reference import predict
from parties.predict import main as predict_main
from parties.predict import read_features

ort = pytest.importorskip("onnxruntime")

RNG = np.random.default_rng(11)
KINDS = {
    "linear": [RNG.standard_normal((6, 1))],
    "logistic": [RNG.standard_normal((6, 1))],
    "softmax": [RNG.standard_normal((6, 4))],
    "mlp": [RNG.standard_normal((6, 5)), RNG.standard_normal((5, 2)), RNG.standard_normal((2, 3))],
}
FEATURES = [f"col{i}" for i in range(6)]


@pytest.mark.parametrize("kind", list(KINDS))
def test_torch_onnx_and_reference_agree(kind: str, tmp_path: Path) -> None:
    weights = KINDS[kind]
    spec = spec_from_run(kind, FEATURES, weights)
    save(spec, tmp_path / "model.pt")
    export_onnx(spec, tmp_path / "model.onnx")
    x = RNG.standard_normal((50, 6)) * 3
    want = predict(kind, weights, x)
    with torch.no_grad():
        got_torch = load(tmp_path / "model.pt")(torch.as_tensor(x)).numpy()
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["features"]
    got_onnx = session.run(None, {"features": x.astype(np.float32)})[0]
    assert got_torch.shape == got_onnx.shape == want.shape
    np.testing.assert_allclose(got_torch, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got_onnx, want, rtol=1e-4, atol=1e-5)  # float32 graph
    meta = dict(session.get_modelmeta().custom_metadata_map)
    assert meta["features"].split(",") == FEATURES and meta["kind"] == kind
    back = load_spec(tmp_path / "model.pt")
    assert back.kind == kind and back.features == tuple(FEATURES)
    for a, b in zip(back.weights, weights, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", list(KINDS))
def test_intercepts_in_torch_onnx_and_reference(kind: str, tmp_path: Path) -> None:
    """model.intercept: one bias per output and hidden unit, in all three artefacts; raw-scale
    inputs (columns from 1e-3 to 1e5) give the same outputs."""
    weights = [w * 1e-3 for w in KINDS[kind]]
    biases = [RNG.standard_normal(w.shape[1]) for w in weights]
    spec = spec_from_run(kind, FEATURES, weights, None, biases)
    save(spec, tmp_path / "model.pt")
    export_onnx(spec, tmp_path / "model.onnx")
    x = RNG.standard_normal((40, 6)) * np.logspace(-3, 2, 6)
    want = predict(kind, weights, x, biases)
    assert not np.allclose(want, predict(kind, weights, x))  # the biases matter
    with torch.no_grad():
        got_torch = load(tmp_path / "model.pt")(torch.as_tensor(x)).numpy()
    got_onnx = ort.InferenceSession(str(tmp_path / "model.onnx")).run(
        None, {"features": x.astype(np.float32)})[0]
    np.testing.assert_allclose(got_torch, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got_onnx, want, rtol=1e-4, atol=1e-5)
    back = load_spec(tmp_path / "model.pt")
    assert back.biases is not None
    for a, b in zip(back.biases, biases, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="one bias vector per layer"):
        spec_from_run(kind, FEATURES, weights, None, biases[:-1] + [np.zeros(7)])


def test_bad_model_files(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="junk.pt"):
        load_spec(tmp_path / "junk.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="not an mpc-toolkit model"):
        load_spec(tmp_path / "other.pt")


def _csv(path: Path, rows: list[list[str]]) -> Path:
    path.write_text("\n".join(",".join(r) for r in [["id", *FEATURES, "target"], *rows]) + "\n")
    return path


@pytest.mark.parametrize("cell", ["", "NA", "nan"])
def test_missing_cells_are_refused_by_line_and_column(tmp_path: Path, cell: str) -> None:
    good = ["1", *["0.5"] * 6, "1"]
    bad = ["2", "1", "2", cell, "4", "5", "6", "0"]
    path = _csv(tmp_path / "data.csv", [good, bad])
    with pytest.raises(ConfigError, match=r"line 3, column 'col2': missing value"):
        read_features(path, FEATURES)


def test_text_cell_and_missing_column(tmp_path: Path) -> None:
    path = _csv(tmp_path / "data.csv", [["1", "S3CRET", *["0"] * 5, "1"]])
    with pytest.raises(ConfigError, match=r"line 2, column 'col0': not a number") as info:
        read_features(path, FEATURES)
    assert "S3CRET" not in str(info.value)
    with pytest.raises(ConfigError, match="missing feature column"):
        read_features(path, [*FEATURES, "col9"])


def test_predict_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = KINDS["softmax"]
    save(spec_from_run("softmax", FEATURES, weights), tmp_path / "model.pt")
    x = RNG.standard_normal((4, 6))
    rows = [[str(i), *(str(float(v)) for v in r), "0"] for i, r in enumerate(x)]
    data = _csv(tmp_path / "data.csv", rows)
    assert predict_main([str(tmp_path), str(data), "--out", str(tmp_path / "p.csv")]) == 0
    table = np.genfromtxt(tmp_path / "p.csv", delimiter=",", names=True)
    np.testing.assert_allclose(np.column_stack([table[f"p{k}"] for k in range(4)]),
                               predict("softmax", weights, x), atol=1e-12)
    assert list(table["prediction"]) == list(predict("softmax", weights, x).argmax(1))
    assert predict_main([str(tmp_path / "nowhere"), str(data)]) == 2
    assert "no model file" in capsys.readouterr().err


def test_raw_categorical_column_is_encoded_for_prediction(tmp_path: Path) -> None:
    names = ["x", "colour=red", "colour=blue"]
    cats = {"colour": ("red", "blue")}
    path = tmp_path / "raw.csv"
    path.write_text("x,colour,target\n1.5,blue,0\n-2,red,1\n")
    np.testing.assert_array_equal(read_features(path, names, cats), [[1.5, 0, 1], [-2, 1, 0]])
    path.write_text("x,colour=red,colour=blue\n1.5,0,1\n")  # already one-hot: taken as is
    np.testing.assert_array_equal(read_features(path, names, cats), [[1.5, 0, 1]])
    path.write_text("x,colour\n1.5,green\n")
    with pytest.raises(ConfigError, match=r"line 2, column 'colour': value is not one of"):
        read_features(path, names, cats)
    spec = spec_from_run("logistic", names, [np.ones((3, 1))], cats)
    save(spec, tmp_path / "model.pt")
    assert load_spec(tmp_path / "model.pt").categories == cats
