"""Plaintext float64 training with the same schedule, initialisation and gradients as
``training.py`` (exact sigmoid/softmax): the reference secure training is checked against.

Reads every party's data, so it is a demo / verification tool (``mpc-launch --reference``),
never part of a deployment.
"""

from __future__ import annotations

import numpy as np
import torch

from mpc.learn.dataprep import plain_to_raw
from mpc.learn.jointstats import plain_standardize, plain_statistics
from mpc.learn.training import batch_schedule

__all__ = [
    "train_reference", "predict", "metrics", "reference_model", "prepare_reference",
    "with_intercept",
]


def with_intercept(init: list[np.ndarray]) -> list[np.ndarray]:
    """Initial weights with a zero bias row appended to every matrix."""
    return [np.vstack([w, np.zeros((1, w.shape[1]))]) for w in init]


def _forward(kind: str, ws: list[torch.Tensor], x: torch.Tensor,
             intercept: bool = False):  # noqa: ANN202
    if kind == "mlp":
        acts = []
        h = x @ ws[0]
        for w in ws[1:]:
            a = torch.relu(h)
            if intercept:
                a = torch.cat([a, torch.ones((a.shape[0], 1), dtype=a.dtype)], 1)
            acts.append((a, (h >= 0).to(h.dtype)))
            h = a @ w
        return torch.softmax(h, 1), acts
    u = x @ ws[0]
    if kind == "logistic":
        return torch.sigmoid(u), []
    if kind == "softmax":
        return torch.softmax(u, 1), []
    return u, []


def train_reference(
    kind: str,
    x: np.ndarray,
    y: np.ndarray,
    init: list[np.ndarray],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    shuffle: bool = True,
    outputs: int = 1,
    intercept: bool = False,
) -> list[np.ndarray]:
    """Mini-batch SGD in float64; returns the final weights (one array per layer). With
    ``intercept``, ``x`` already carries its 1 column and every matrix a bias row last (the
    hidden activations get a 1 column here, as in the secure MLP)."""
    X = torch.as_tensor(x, dtype=torch.float64)
    Y = torch.as_tensor(y, dtype=torch.float64)
    if kind in ("softmax", "mlp"):
        Y = torch.nn.functional.one_hot(Y.long(), outputs).to(torch.float64)
    else:
        Y = Y.reshape(-1, 1)
    ws = [torch.as_tensor(w, dtype=torch.float64).clone() for w in init]
    for epoch in range(epochs):
        for batch in batch_schedule(seed, epoch, X.shape[0], batch_size, shuffle):
            idx = torch.from_numpy(batch)
            xb, yb = X[idx], Y[idx]
            p, acts = _forward(kind, ws, xb, intercept)
            delta = p - yb
            scale = learning_rate / len(batch)
            grads = [torch.empty(0)] * len(ws)
            for layer in range(len(ws) - 1, 0, -1):
                a, d = acts[layer - 1]
                grads[layer] = a.T @ delta
                back = delta @ ws[layer].T
                delta = (back[:, :-1] if intercept else back) * d
            grads[0] = xb.T @ delta
            ws = [w - scale * g for w, g in zip(ws, grads, strict=True)]
    return [w.numpy() for w in ws]


def predict(kind: str, weights: list[np.ndarray], x: np.ndarray,
            biases: list[np.ndarray] | None = None) -> np.ndarray:
    """Model outputs (probabilities for classifiers, values for linear); ``biases``: one
    intercept vector per layer (None: no intercept)."""
    h = torch.as_tensor(x, dtype=torch.float64)
    for i, w in enumerate(weights):
        h = h @ torch.as_tensor(w, dtype=torch.float64)
        if biases is not None:
            h = h + torch.as_tensor(biases[i], dtype=torch.float64)
        if i < len(weights) - 1:
            h = torch.relu(h)
    if kind == "logistic":
        return torch.sigmoid(h).numpy()
    if kind in ("softmax", "mlp"):
        return torch.softmax(h, 1).numpy()
    return h.numpy()


def reference_model(
    kind: str,
    x: np.ndarray,
    y: np.ndarray,
    init: list[np.ndarray],
    *,
    standardize: bool,
    intercept: bool,
    **train: object,
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """The plaintext twin of a whole secure run on pooled rows ``x`` (raw): the same data
    preparation (joint mean/std in float64, constant columns -> 0, label standardised for
    linear), the intercept column, training, and the conversion to raw scale. Returns the
    raw-scale (weights, biases or None)."""
    d = x.shape[1]
    x, y, init, x_stats, y_stats = prepare_reference(
        kind, x, y, init, standardize=standardize, intercept=intercept)
    ws = train_reference(kind, x, y, init, intercept=intercept, **train)  # type: ignore[arg-type]
    return plain_to_raw(ws, d, intercept, x_stats, y_stats)


def prepare_reference(
    kind: str, x: np.ndarray, y: np.ndarray, init: list[np.ndarray], *, standardize: bool,
    intercept: bool,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], tuple[np.ndarray, np.ndarray] | None,
           tuple[float, float] | None]:
    """float64 data preparation: (x, y, init) as the secure training sees them (standardised,
    with the 1 column and bias rows), and the statistics for :func:`plain_to_raw`."""
    x_stats = y_stats = None
    if standardize:
        mu, _, inv = plain_statistics(x)
        x = plain_standardize(x, mu, inv)
        x_stats = (mu, inv)
        if kind == "linear":
            my, sy, iy = plain_statistics(y.reshape(-1, 1))
            y = plain_standardize(y.reshape(-1, 1), my, iy)[:, 0]
            y_stats = (float(my[0]), float(sy[0]))
    if intercept:
        x = np.column_stack([x, np.ones(len(x))])
        init = with_intercept(init)
    return x, y, init, x_stats, y_stats


def metrics(
    kind: str, weights: list[np.ndarray], x: np.ndarray, y: np.ndarray,
    biases: list[np.ndarray] | None = None,
) -> dict[str, float]:
    """accuracy for classifiers; mse and r2 for linear regression."""
    p = predict(kind, weights, x, biases)
    if kind == "logistic":
        return {"accuracy": float(np.mean((p[:, 0] >= 0.5) == (y >= 0.5)))}
    if kind in ("softmax", "mlp"):
        return {"accuracy": float(np.mean(p.argmax(1) == y.astype(np.int64)))}
    err = p[:, 0] - y
    mse = float(np.mean(err**2))
    var = float(np.var(y))
    return {"mse": mse, "r2": 1.0 - mse / var if var > 0 else 0.0}
