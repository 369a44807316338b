"""Plaintext float64 DP-SGD (verification and benchmarks only): the algorithm of ``mpc.dp``
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
    """Residuals scaled so that every per-example gradient r_i x_i has norm <= C."""
    norm = np.abs(r) * np.linalg.norm(x, axis=1)
    return r * np.minimum(1.0, clip / np.maximum(norm, 1e-300))


def dp_sgd_reference(kind: str, X: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int,
                     learning_rate: float, noise_multiplier: float, clip: float,
                     seed: int, batches: list[list[np.ndarray]] | None = None) -> np.ndarray:
    """Weights (d x 1) of DP-SGD for ``kind`` in (linear, logistic) from zero weights.

    ``batches``: per epoch, the row indices of each step (e.g. ``mpc.dp.poisson_batches``);
    by default Poisson batches from ``seed``.
    """
    rng = np.random.default_rng(seed)
    rows, d = X.shape
    w = np.zeros(d)
    q = batch_size / rows
    steps = math.ceil(rows / batch_size)
    for epoch in range(epochs):
        plan = batches[epoch] if batches is not None else [
            np.nonzero(rng.random(rows) < q)[0] for _ in range(steps)]
        for rows_b in plan:
            xb, yb = X[rows_b], y[rows_b]
            z = xb @ w
            r = (_sigmoid(z) if kind == "logistic" else z) - yb
            g = xb.T @ clip_residuals(r, xb, clip)
            g = g + rng.normal(0.0, noise_multiplier * clip, d)
            w = w - learning_rate / batch_size * g
    return w.reshape(-1, 1)
