"""The digits workloads of the neural benchmark: data, models, and the plaintext float64 twin.

Shared by ``bench/neural_bench.py`` (our processes and the plaintext column), the CrypTen peer
(``bench/crypten/run_crypten_neural.py``) and ``bench/wan_bench.py``, so that all three train
on the same rows with the same batches, initial weights, learning rate and gradients.

Data: the scenario's 8x8 digits (``scenarios/data/digits``): the three labs' training rows
pooled in file order (1437 x 64), and test.csv (360 rows); pixels standardised with the
training rows' mean and standard deviation (a constant column becomes 0), here in plaintext
because this is public benchmark data: the secure runs get ``data.standardize = false`` and
``model.intercept = false``, i.e. exactly a 64 -> 10 softmax and a 64 -> 32 -> 10 MLP.
Row shards per party are :func:`bench.data.split_rows` (in order), so the pooled order that
every party's batch indices refer to is the file order.

Schedule and initialisation come from ``mpc.learn.training`` (``batch_schedule`` and
``initial_weights`` with the run's seed), the same functions our parties use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mpc.learn.training import batch_schedule, initial_weights

__all__ = ["DIGITS", "MODELS", "NeuralModel", "digits", "init_weights", "train_plain",
           "accuracy", "steps_per_epoch"]

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "scenarios" / "data" / "digits"
LABS = ("lab_a", "lab_b", "lab_c")
CLASSES = 10
SEED = 0


@dataclass(frozen=True)
class NeuralModel:
    """One workload: model kind, hidden widths, SGD settings (from scenarios/digits-*.toml)."""

    name: str
    kind: str  # "softmax" or "mlp"
    hidden: tuple[int, ...]
    batch: int
    lr: float
    init: str  # "zeros" or "normal" (He scale)
    epochs: int  # the scenario's epochs


MODELS = {
    "digits-softmax": NeuralModel("digits-softmax", "softmax", (), 64, 0.5, "zeros", 10),
    "digits-mlp": NeuralModel("digits-mlp", "mlp", (32,), 32, 0.1, "normal", 20),
}


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    header = path.read_text().split("\n", 1)[0].split(",")
    data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    label = header.index("target")
    return np.delete(data, label, axis=1), data[:, label]


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(Xtrain 1437x64, ytrain, Xtest 360x64, ytest): standardised pixels, integer labels."""
    parts = [_read(DIGITS / f"{lab}.csv") for lab in LABS]
    Xtr = np.vstack([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    Xte, yte = _read(DIGITS / "test.csv")
    mean, std = Xtr.mean(axis=0), Xtr.std(axis=0)
    std[std == 0] = 1.0
    return (Xtr - mean) / std, ytr, (Xte - mean) / std, yte


def init_weights(model: NeuralModel, features: int, seed: int = SEED) -> list[np.ndarray]:
    """The public initial weights our parties use for this model (no bias rows)."""
    dims = [features, *model.hidden, CLASSES]
    return initial_weights(seed, list(zip(dims[:-1], dims[1:], strict=True)), model.init, None)


def steps_per_epoch(rows: int, batch: int) -> int:
    return -(-rows // batch)


def train_plain(
    model: NeuralModel,
    X: np.ndarray,
    y: np.ndarray,
    epochs: int,
    seed: int = SEED,
    max_steps: int | None = None,
) -> tuple[list[np.ndarray], float]:
    """Float64 SGD with exact softmax, hand-derived gradients (as ``mpc.learn.reference``).

    Forward ``h = X_B W1``, ``a = relu(h)``, ``p = softmax(a W2)`` (softmax: ``p =
    softmax(X_B W)``); backward ``delta = p - Y_B``, ``G2 = a^T delta``, ``G1 = X_B^T (delta
    W2^T * [h >= 0])``; update ``W -= lr / |B| * G``. ``max_steps`` stops each epoch after that
    many steps (to mirror a truncated CrypTen run). Returns (weights, wall seconds per epoch).
    """
    Xt = torch.as_tensor(X, dtype=torch.float64)
    Y = torch.nn.functional.one_hot(torch.as_tensor(y).long(), CLASSES).to(torch.float64)
    ws = [torch.as_tensor(w, dtype=torch.float64).clone() for w in init_weights(model, X.shape[1],
                                                                               seed)]
    start = time.perf_counter()
    for epoch in range(epochs):
        for step, batch in enumerate(batch_schedule(seed, epoch, Xt.shape[0], model.batch, True)):
            if max_steps is not None and step >= max_steps:
                break
            idx = torch.from_numpy(batch)
            xb, yb = Xt[idx], Y[idx]
            scale = model.lr / len(batch)
            if model.kind == "softmax":
                delta = torch.softmax(xb @ ws[0], 1) - yb
                ws[0] = ws[0] - scale * (xb.T @ delta)
                continue
            h = xb @ ws[0]
            a = torch.relu(h)
            delta = torch.softmax(a @ ws[1], 1) - yb
            g2 = a.T @ delta
            g1 = xb.T @ ((delta @ ws[1].T) * (h >= 0).to(h.dtype))
            ws = [ws[0] - scale * g1, ws[1] - scale * g2]
    seconds = (time.perf_counter() - start) / max(epochs, 1)
    return [w.numpy() for w in ws], seconds


def accuracy(weights: list[np.ndarray], X: np.ndarray, y: np.ndarray) -> float:
    """Test accuracy of the argmax of the model's logits."""
    h = np.asarray(X, dtype=np.float64)
    for i, w in enumerate(weights):
        h = h @ np.asarray(w, dtype=np.float64)
        if i < len(weights) - 1:
            h = np.maximum(h, 0.0)
    return float(np.mean(h.argmax(axis=1) == np.asarray(y).astype(np.int64)))
