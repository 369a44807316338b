"""Benchmark data sets shared by the toolkit bench, the CrypTen peer and the plaintext reference.

All data here is public benchmark data (not secrets), so a seeded numpy Generator is fine.
Arrays are float64; callers convert to whatever dtype they need.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_breast_cancer

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def breast_cancer(seed: int = 0) -> Arrays:
    """Wisconsin breast cancer: 80/20 split, standardised with the training statistics.

    The split follows ``scenarios/make_data.py``: the first 114 (= round(0.2 n)) indices of
    ``default_rng(seed).permutation(n)`` are the test rows, the rest the training rows, both
    kept in their original order. Returns (Xtrain, ytrain, Xtest, ytest): 455 x 30 training
    rows, 114 test rows, y in {0, 1}.
    """
    X, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(X))
    n_test = round(0.2 * len(X))
    tr, te = np.sort(order[n_test:]), np.sort(order[:n_test])
    Xtr, Xte, ytr, yte = X[tr], X[te], y[tr], y[te]
    mean = Xtr.mean(axis=0)
    std = Xtr.std(axis=0)
    std[std == 0] = 1.0
    return (
        (Xtr - mean) / std,
        ytr.astype(np.float64),
        (Xte - mean) / std,
        yte.astype(np.float64),
    )


def synthetic(rows: int, dims: int, seed: int = 0) -> Arrays:
    """Linearly separable-ish data: X ~ N(0,1), w ~ N(0,1), y = (Xw + 0.5 noise > 0) in {0, 1}.

    The test set has ``rows // 5`` extra rows (20% of ``rows``) drawn the same way with the same w.
    """
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(dims)
    n_test = rows // 5
    X = rng.standard_normal((rows + n_test, dims))
    noise = rng.standard_normal(rows + n_test)
    y = (X @ w + 0.5 * noise > 0).astype(np.float64)
    return X[:rows], y[:rows], X[rows:], y[rows:]


def split_rows(X: np.ndarray, y: np.ndarray, parties: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split rows evenly and in order into ``parties`` horizontal shards (first shards get +1)."""
    if parties < 1:
        raise ValueError("parties must be >= 1")
    idx = np.array_split(np.arange(X.shape[0]), parties)
    return [(X[i], y[i]) for i in idx]


WORKLOADS: dict[str, tuple[int, int] | None] = {
    "breast_cancer": None,
    "synthetic10k": (10_000, 50),
    "synthetic100k": (100_000, 100),
}


def load(workload: str) -> Arrays:
    """Load a named workload: ``breast_cancer``, ``synthetic10k`` (10k x 50), ``synthetic100k``."""
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; choose from {sorted(WORKLOADS)}")
    shape = WORKLOADS[workload]
    if shape is None:
        return breast_cancer()
    return synthetic(*shape)
