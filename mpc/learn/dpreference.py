"""Plaintext float64 DP-SGD (verification and benchmarks only): the algorithm of ``mpc.learn.dp``
without MPC, with numpy randomness (NOT for releasing anything: its noise is not from a
cryptographic source and its sampling seed is whatever the caller passes).

Per step: Poisson batch at rate q = B / N, per-example gradients r_i x_i clipped to L2 norm C,
summed, plus N(0, (sigma C)^2) per coordinate, scaled by lr / B [ACG+16].
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["dp_sgd_reference", "clip_residuals"]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def clip_residuals(r: np.ndarray, x: np.ndarray, clip: float) -> np.ndarray:
    """Residuals (B,) or (B, K) scaled so that every per-example gradient x_i r_i^T has
    (Frobenius) norm ||x_i|| ||r_i|| <= C."""
    rn = np.abs(r) if r.ndim == 1 else np.linalg.norm(r, axis=1)
    factor = np.minimum(1.0, clip / np.maximum(rn * np.linalg.norm(x, axis=1), 1e-300))
    return r * (factor if r.ndim == 1 else factor[:, None])


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def dp_sgd_reference(kind: str, X: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int,
                     learning_rate: float, noise_multiplier: float, clip: float,
                     seed: int, batches: list[list[np.ndarray]] | None = None,
                     classes: int = 1) -> np.ndarray:
    """Weights (d x K) of DP-SGD for ``kind`` in (linear, logistic, softmax) from zero
    weights (softmax: y holds class indices, K = ``classes``).

    ``batches``: per epoch, the row indices of each step (e.g. ``mpc.learn.dp.poisson_batches``);
    by default Poisson batches from ``seed``.
    """
    rng = np.random.default_rng(seed)
    rows, d = X.shape
    k = classes if kind == "softmax" else 1
    w = np.zeros((d, k))
    Y = np.eye(k)[y.astype(int)] if kind == "softmax" else y.reshape(-1, 1)
    q = batch_size / rows
    steps = math.ceil(rows / batch_size)
    for epoch in range(epochs):
        plan = batches[epoch] if batches is not None else [
            np.nonzero(rng.random(rows) < q)[0] for _ in range(steps)]
        for rows_b in plan:
            xb, yb = X[rows_b], Y[rows_b]
            z = xb @ w
            p = {"logistic": _sigmoid, "softmax": _softmax}.get(kind, lambda v: v)(z)
            r = p - yb
            r = clip_residuals(r[:, 0] if k == 1 else r, xb, clip).reshape(len(rows_b), k)
            g = xb.T @ r + rng.normal(0.0, noise_multiplier * clip, (d, k))
            w = w - learning_rate / batch_size * g
    return w
