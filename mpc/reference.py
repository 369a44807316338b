"""Plaintext float64 training with the same schedule, initialisation and gradients as
``training.py`` (exact sigmoid/softmax): the reference secure training is checked against.

Reads every party's data, so it is a demo / verification tool (``mpc-launch --reference``),
never part of a deployment.
"""

from __future__ import annotations

import numpy as np
import torch

from mpc.training import batch_schedule

__all__ = ["train_reference", "predict", "metrics"]


def _forward(kind: str, ws: list[torch.Tensor], x: torch.Tensor):  # noqa: ANN202
    if kind == "mlp":
        acts = []
        h = x @ ws[0]
        for w in ws[1:]:
            a = torch.relu(h)
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
) -> list[np.ndarray]:
    """Mini-batch SGD in float64; returns the final weights (one array per layer)."""
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
            p, acts = _forward(kind, ws, xb)
            delta = p - yb
            scale = learning_rate / len(batch)
            grads = [torch.empty(0)] * len(ws)
            for layer in range(len(ws) - 1, 0, -1):
                a, d = acts[layer - 1]
                grads[layer] = a.T @ delta
                delta = (delta @ ws[layer].T) * d
            grads[0] = xb.T @ delta
            ws = [w - scale * g for w, g in zip(ws, grads, strict=True)]
    return [w.numpy() for w in ws]


def predict(kind: str, weights: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Model outputs (probabilities for classifiers, values for linear)."""
    ws = [torch.as_tensor(w, dtype=torch.float64) for w in weights]
    p, _ = _forward(kind, ws, torch.as_tensor(x, dtype=torch.float64))
    return p.numpy()


def metrics(
    kind: str, weights: list[np.ndarray], x: np.ndarray, y: np.ndarray
) -> dict[str, float]:
    """accuracy for classifiers; mse and r2 for linear regression."""
    p = predict(kind, weights, x)
    if kind == "logistic":
        return {"accuracy": float(np.mean((p[:, 0] >= 0.5) == (y >= 0.5)))}
    if kind in ("softmax", "mlp"):
        return {"accuracy": float(np.mean(p.argmax(1) == y.astype(np.int64)))}
    err = p[:, 0] - y
    mse = float(np.mean(err**2))
    var = float(np.var(y))
    return {"mse": mse, "r2": 1.0 - mse / var if var > 0 else 0.0}
