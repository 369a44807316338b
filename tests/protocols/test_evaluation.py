"""Joint test metrics inside MPC (``mpc.learn.evaluation``) against float64 on the union of the
parties' test rows: accuracy and AUC (logistic), accuracy (softmax, mlp), MSE and R^2 (linear);
horizontal and vertical layouts, n = 2 and 3, in the simulation (with the dealer's dry run)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpc.config.policy import RevealPolicy, RevealRule
from mpc.core import fixedpoint
from mpc.core.errors import PolicyError
from mpc.core.sharing import reconstruct
from mpc.learn.evaluation import evaluate, metric_names, plain_metrics, require_metrics_reveal
from mpc.learn.training import Layout
from mpc.protocols.simulate import simulate
from tests.conftest import share_reals

TOL = 1e-3


def _split_rows(n: int, rows: int) -> list[tuple[int, int]]:
    cuts = np.linspace(0, rows, n + 1).astype(int)
    cuts[1] -= 3  # unequal blocks
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def _secure(n, prg, kind, weights, x, y, vertical=False, outputs=1):  # noqa: ANN001, ANN202
    shares = [share_reals(torch.as_tensor(w), n, prg) for w in weights]
    per_party_w = [[s[p] for s in shares] for p in range(n)]
    if vertical:
        cols = np.array_split(np.arange(x.shape[1]), n)
        feats = [x[:, c] for c in cols]
        labels = [y if p == 0 else None for p in range(n)]
        layout = Layout("vertical", tuple(len(c) for c in cols), len(y), x.shape[1], outputs,
                        kind in ("softmax", "mlp"))
        label_party = 0
    else:
        spans = _split_rows(n, len(y))
        feats = [x[a:b] for a, b in spans]
        labels = [y[a:b] for a, b in spans]
        layout = Layout("horizontal", tuple(b - a for a, b in spans), len(y), x.shape[1],
                        outputs, kind in ("softmax", "mlp"))
        label_party = None
    res = simulate(n, lambda ctx, w, f, lab: evaluate(ctx, kind, w, layout, f, lab, label_party),
                   per_party_w, feats, labels)
    got = fixedpoint.decode(reconstruct(list(res))).numpy()
    return dict(zip(metric_names(kind), got.tolist(), strict=True)), res


def _data(seed: int, rows: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, d)), rng.standard_normal((d, 1))


def _check(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert abs(got[k] - want[k]) <= TOL, (k, got, want)


@pytest.mark.parametrize("n", (2, 3))
@pytest.mark.parametrize("vertical", (False, True), ids=("horizontal", "vertical"))
def test_logistic_accuracy_and_auc(n, vertical, prg):
    x, w = _data(n, 90, 6)
    noise = np.random.default_rng(10 + n).standard_normal(90) * 1.5
    y = ((x @ w)[:, 0] + noise > 0).astype(np.float64)
    want = plain_metrics("logistic", [w], x, y)
    got, res = _secure(n, prg, "logistic", [w], x, y, vertical)
    _check(got, want)
    assert 0.5 < want["auc"] < 1 and want["accuracy"] < 1  # a non-trivial case
    print(f"logistic n={n} rows=90: {res.stats[0].rounds} rounds, "
          f"{res.stats[0].bytes_sent} bytes sent by P0, dealer {res.dealer_bytes} bytes")


@pytest.mark.parametrize("n", (2, 3))
def test_logistic_ties_and_single_class(n, prg):
    """Exact score ties count 1/2 in the AUC; a single-class test set has AUC 1/2."""
    x = np.repeat(np.random.default_rng(3).standard_normal((10, 3)), 3, axis=0)
    w = np.array([[0.5], [-1.0], [0.25]])
    y = np.tile([1.0, 0.0, 1.0], 10)
    got, _ = _secure(n, prg, "logistic", [w], x, y)
    _check(got, plain_metrics("logistic", [w], x, y))
    ones = np.ones(30)
    got, _ = _secure(n, prg, "logistic", [w], x, ones)
    _check(got, plain_metrics("logistic", [w], x, ones))
    assert got["auc"] == pytest.approx(0.5, abs=TOL)


@pytest.mark.parametrize("n", (2, 3))
@pytest.mark.parametrize("kind", ("softmax", "mlp"))
def test_argmax_accuracy(n, kind, prg):
    rng = np.random.default_rng(20 + n)
    x = rng.standard_normal((80, 5))
    weights = ([rng.standard_normal((5, 4))] if kind == "softmax"
               else [rng.standard_normal((5, 6)), rng.standard_normal((6, 4))])
    y = (x @ rng.standard_normal((5, 4))).argmax(1).astype(np.float64)
    want = plain_metrics(kind, weights, x, y)
    got, _ = _secure(n, prg, kind, weights, x, y, outputs=4)
    _check(got, want)
    assert 0.2 < want["accuracy"] < 1


@pytest.mark.parametrize("n", (2, 3))
@pytest.mark.parametrize("vertical", (False, True), ids=("horizontal", "vertical"))
def test_linear_mse_and_r2(n, vertical, prg):
    x, w = _data(30 + n, 70, 5)
    y = (x @ w)[:, 0] * 1.1 + np.random.default_rng(n).standard_normal(70) * 0.8 + 0.3
    want = plain_metrics("linear", [w], x, y)
    got, res = _secure(n, prg, "linear", [w], x, y, vertical)
    _check(got, want)
    assert 0 < want["r2"] < 1
    print(f"linear n={n} rows=70: {res.stats[0].rounds} rounds, "
          f"{res.stats[0].bytes_sent} bytes sent by P0")


@pytest.mark.parametrize("n", (2, 3))
def test_linear_r2_clamped_and_constant_labels(n, prg):
    """R^2 below -1 is reported as -1 (also for an MSE far beyond the label variance);
    constant test labels (SST = 0) give R^2 = 0."""
    x, w = _data(40 + n, 40, 3)
    y = -(x @ w)[:, 0]  # anti-correlated predictions: R^2 = -3 before the clamp
    got, _ = _secure(n, prg, "linear", [w], x, y)
    _check(got, plain_metrics("linear", [w], x, y))
    assert got["r2"] == pytest.approx(-1.0, abs=TOL)
    const = np.full(40, 0.5)
    got, _ = _secure(n, prg, "linear", [w], x, const)
    _check(got, plain_metrics("linear", [w], x, const))
    # Far-off predictions: MSE ~ 3e4 (beyond the comparisons' 2^14 range before truncation).
    wild = [w * 150]
    want = plain_metrics("linear", wild, x, y)
    got, _ = _secure(n, prg, "linear", wild, x, y)
    assert want["mse"] > 2**14 and abs(got["mse"] - want["mse"]) <= 1e-5 * want["mse"]
    assert got["r2"] == pytest.approx(-1.0, abs=TOL)


def test_policy_must_allow_metrics() -> None:
    policy = RevealPolicy("hospital_a", (RevealRule("weights", "launcher"),))
    with pytest.raises(PolicyError, match="metrics"):
        require_metrics_reveal(policy, "launcher")
    require_metrics_reveal(RevealPolicy("a", (RevealRule("metrics", "all"),)), "launcher")
