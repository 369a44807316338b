"""Plaintext torch reference for the logistic-regression benchmark (same SGD as the MPC runs)."""

from __future__ import annotations

import time

import numpy as np
import torch


def _as_tensor(a: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float64)


def train_logreg(
    X: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    epochs: int,
    batch: int,
    lr: float,
    seed: int = 0,
    max_steps: int | None = None,
) -> tuple[torch.Tensor, float]:
    """Mini-batch SGD logistic regression, no intercept, zero init, exact sigmoid.

    Each epoch visits the rows in the order of ``torch.randperm`` drawn from
    ``torch.Generator().manual_seed(seed + epoch)``, in consecutive batches of ``batch`` rows
    (the last one may be short); the update is ``w -= lr * X_B^T (sigmoid(X_B w) - y_B) / B``.
    ``max_steps`` stops each epoch after that many steps (to mirror a truncated MPC run).
    Returns the weights (float64, shape (d,)) and the mean wall seconds per epoch.
    """
    Xt, yt = _as_tensor(X), _as_tensor(y)
    n, d = Xt.shape
    w = torch.zeros(d, dtype=torch.float64)
    start = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        for step, lo in enumerate(range(0, n, batch)):
            if max_steps is not None and step >= max_steps:
                break
            idx = perm[lo : lo + batch]
            Xb, yb = Xt[idx], yt[idx]
            p = torch.sigmoid(Xb @ w)
            w -= lr * (Xb.t() @ (p - yb)) / idx.numel()
    elapsed = time.perf_counter() - start
    return w, elapsed / max(epochs, 1)


def accuracy(X: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, w: torch.Tensor) -> float:
    """Fraction of rows where ``(X w > 0)`` equals the {0, 1} label."""
    pred = (_as_tensor(X) @ _as_tensor(w).reshape(-1)) > 0
    return float((pred == (_as_tensor(y) > 0.5)).double().mean())


if __name__ == "__main__":
    from bench.data import load

    torch.set_num_threads(1)
    for name in ("breast_cancer", "synthetic10k", "synthetic100k"):
        Xtr, ytr, Xte, yte = load(name)
        b = 64 if name == "breast_cancer" else 128
        w, spe = train_logreg(Xtr, ytr, epochs=2, batch=b, lr=0.5)
        print(f"{name}: {spe:.4f} s/epoch, test accuracy {accuracy(Xte, yte, w):.4f}")
