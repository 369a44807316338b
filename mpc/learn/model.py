"""Released models as deployable artefacts: a torch module and an ONNX graph.

The launcher reconstructs the final weights (the only plaintext output of a run) and writes them
three ways: ``weights.npz`` (the raw matrices), ``model.pt`` (a torch ``state_dict`` with the
model's description; :func:`load` rebuilds the ``torch.nn.Module``) and ``model.onnx`` (ONNX,
opset 17). All three compute the same function of one float input whose columns are the feature
columns listed in ``report.json`` under ``features``, in that order:

- ``logistic``: P(y = 1), shape [rows, 1];
- ``softmax`` and ``mlp`` (ReLU hidden layers): class probabilities, shape [rows, classes];
- ``linear``: the prediction, shape [rows, 1].

Weights are stored as the training keeps them, one (fan_in x fan_out) matrix per layer, and
(``model.intercept``, or any standardised run: its raw-scale conversion has an intercept) one
bias vector per layer; the torch module's ``nn.Linear`` layers hold their transposes and the
biases; the ONNX graph adds them after each MatMul. Weights are on raw feature scale.
Nothing here sees secret data.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mpc.core.errors import ConfigError

__all__ = [
    "ModelSpec",
    "KINDS",
    "build_module",
    "save",
    "load",
    "load_spec",
    "export_onnx",
    "spec_from_run",
]

KINDS = ("linear", "logistic", "softmax", "mlp")
FORMAT = "mpc-toolkit/model"
VERSION = 1
ONNX_OPSET = 17
INPUT_NAME = "features"


@dataclass(frozen=True)
class ModelSpec:
    """A released model: its kind, feature names (input columns) and weights per layer."""

    kind: str
    features: tuple[str, ...]
    weights: tuple[np.ndarray, ...]
    # data.categorical: raw column -> categories, whose one-hot columns are among ``features``
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # one intercept vector per layer (model.intercept / raw-scale conversion), or None
    biases: tuple[np.ndarray, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"model kind must be one of {KINDS}, got {self.kind!r}")
        if not self.weights:
            raise ValueError("a model needs at least one weight matrix")
        if self.weights[0].shape[0] != len(self.features):
            raise ValueError(
                f"first layer has {self.weights[0].shape[0]} inputs for "
                f"{len(self.features)} feature names"
            )
        for a, b in zip(self.weights[:-1], self.weights[1:], strict=False):
            if a.shape[1] != b.shape[0]:
                raise ValueError(f"layer shapes do not chain: {a.shape} then {b.shape}")
        if self.biases is not None and [b.shape for b in self.biases] != [
            (w.shape[1],) for w in self.weights
        ]:
            raise ValueError("one bias vector per layer, as wide as the layer's output")
        if (self.kind == "mlp") != (len(self.weights) > 1):
            raise ValueError(f"{self.kind}: wrong number of layers ({len(self.weights)})")

    @property
    def output_name(self) -> str:
        return "prediction" if self.kind == "linear" else "probabilities"

    @property
    def inputs(self) -> int:
        return len(self.features)

    @property
    def outputs(self) -> int:
        return int(self.weights[-1].shape[1])


def build_module(spec: ModelSpec) -> torch.nn.Module:
    """The model as a ``torch.nn.Sequential`` of float64 layers holding ``spec``'s weights."""
    layers: list[torch.nn.Module] = []
    for i, w in enumerate(spec.weights):
        has_bias = spec.biases is not None
        linear = torch.nn.Linear(w.shape[0], w.shape[1], bias=has_bias, dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(torch.as_tensor(np.asarray(w, dtype=np.float64).T))
            if spec.biases is not None:
                linear.bias.copy_(torch.as_tensor(np.asarray(spec.biases[i], dtype=np.float64)))
        layers.append(linear)
        if i < len(spec.weights) - 1:
            layers.append(torch.nn.ReLU())
    if spec.kind == "logistic":
        layers.append(torch.nn.Sigmoid())
    elif spec.kind in ("softmax", "mlp"):
        layers.append(torch.nn.Softmax(dim=1))
    module = torch.nn.Sequential(*layers)
    module.eval()
    return module


def save(spec: ModelSpec, path: Path) -> None:
    """Write ``model.pt``: the module's ``state_dict`` and the model description (tensors,
    strings and integers only, so :func:`load` can use ``torch.load(weights_only=True)``)."""
    torch.save(
        {
            "format": FORMAT,
            "version": VERSION,
            "kind": spec.kind,
            "features": list(spec.features),
            "categories": {c: list(v) for c, v in spec.categories.items()},
            "dims": [int(spec.weights[0].shape[0]), *(int(w.shape[1]) for w in spec.weights)],
            "state_dict": build_module(spec).state_dict(),
        },
        path,
    )


def load_spec(path: str | Path) -> ModelSpec:
    """Read a ``model.pt`` written by :func:`save` (no code is unpickled)."""
    try:
        blob = torch.load(Path(path), weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ConfigError(f"{path}: not a readable model file ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ConfigError(f"{path}: not an mpc-toolkit model file")
    if blob.get("version") != VERSION:
        raise ConfigError(f"{path}: model file version {blob.get('version')}, want {VERSION}")
    state = blob["state_dict"]
    keys = sorted((k for k in state if k.endswith(".weight")), key=lambda k: int(k.split(".")[0]))
    weights = tuple(state[k].numpy().T.copy() for k in keys)
    bias_keys = [k[: -len(".weight")] + ".bias" for k in keys]
    biases = (tuple(state[k].numpy().copy() for k in bias_keys)
              if all(k in state for k in bias_keys) else None)
    try:
        categories = {str(c): tuple(v) for c, v in blob.get("categories", {}).items()}
        return ModelSpec(str(blob["kind"]), tuple(blob["features"]), weights, categories,
                         biases)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{path}: inconsistent model file: {exc}") from None


def load(path: str | Path) -> torch.nn.Module:
    """Rebuild the released model from ``model.pt`` as a ``torch.nn.Module`` (float64 input
    of shape [rows, features]; the feature order is ``report.json``'s ``features``)."""
    return build_module(load_spec(path))


def export_onnx(spec: ModelSpec, path: Path) -> None:
    """Write the model as ONNX (opset 17): input ``features`` float32 [rows, d], output
    ``probabilities`` (classifiers) or ``prediction`` (linear); the feature names and model kind
    are in the graph's metadata (``features``: comma-separated)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = []
    inits = []
    current = INPUT_NAME
    for i, w in enumerate(spec.weights):
        name = f"W{i + 1}"
        inits.append(numpy_helper.from_array(np.asarray(w, dtype=np.float32), name))
        out = f"h{i + 1}"
        nodes.append(helper.make_node("MatMul", [current, name], [out]))
        current = out
        if spec.biases is not None:
            inits.append(numpy_helper.from_array(
                np.asarray(spec.biases[i], dtype=np.float32), f"B{i + 1}"))
            nodes.append(helper.make_node("Add", [current, f"B{i + 1}"], [f"z{i + 1}"]))
            current = f"z{i + 1}"
        if i < len(spec.weights) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"a{i + 1}"]))
            current = f"a{i + 1}"
    final = spec.output_name
    if spec.kind == "logistic":
        nodes.append(helper.make_node("Sigmoid", [current], [final]))
    elif spec.kind in ("softmax", "mlp"):
        nodes.append(helper.make_node("Softmax", [current], [final], axis=1))
    else:
        nodes.append(helper.make_node("Identity", [current], [final]))
    graph = helper.make_graph(
        nodes,
        f"mpc-toolkit-{spec.kind}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["rows", spec.inputs])],
        [helper.make_tensor_value_info(final, TensorProto.FLOAT, ["rows", spec.outputs])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="mpc-toolkit",
    )
    model.ir_version = 8  # readable by every onnxruntime that supports opset 17
    helper.set_model_props(
        model,
        {
            "kind": spec.kind,
            "features": ",".join(spec.features),
            "categorical": json.dumps({c: list(v) for c, v in spec.categories.items()}),
        },
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def spec_from_run(
    kind: str,
    features: Sequence[str],
    weights: Sequence[np.ndarray],
    categories: Mapping[str, Sequence[str]] | None = None,
    biases: Sequence[np.ndarray] | None = None,
) -> ModelSpec:
    """The :class:`ModelSpec` of a launcher's reconstructed weights (and intercepts)."""
    return ModelSpec(
        kind,
        tuple(features),
        tuple(np.asarray(w, dtype=np.float64) for w in weights),
        {c: tuple(v) for c, v in (categories or {}).items()},
        None if biases is None else tuple(np.asarray(b, dtype=np.float64) for b in biases),
    )
