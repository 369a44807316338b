"""The secure per-epoch loss (``mpc.learn.loss``) against the float64 loss on the same sample and
weights, for every model kind and n in (2, 3); the piecewise tables' own errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mpc.core import fixedpoint
from mpc.core.sharing import reconstruct
from mpc.learn.loss import (
    LOG_INPUT_SCALE,
    SOFTPLUS,
    log_table,
    loss_sample,
    plain_loss,
    secure_loss,
)
from mpc.learn.training import Layout, Model, mask_inputs
from mpc.protocols.simulate import simulate

# kind, features, outputs, hidden
KINDS = [("logistic", 6, 1, ()), ("linear", 5, 1, ()), ("softmax", 8, 10, ()),
         ("mlp", 6, 4, (5,))]


def test_softplus_table_error() -> None:
    x = torch.linspace(-30, 30, 60001, dtype=torch.float64)
    err = (SOFTPLUS.evaluate(x) - torch.nn.functional.softplus(x)).abs().max()
    assert float(err) <= 3.9e-3


@pytest.mark.parametrize("classes", [2, 3, 10, 26])
def test_log_table_error(classes: int) -> None:
    s = torch.linspace(1, classes, 20001, dtype=torch.float64)
    err = (log_table(classes).evaluate(LOG_INPUT_SCALE * s) - torch.log(s)).abs().max()
    assert float(err) <= 4.1e-4


def test_loss_sample_public_and_bounded() -> None:
    assert list(loss_sample(3, 100)) == list(range(100))
    a, b = loss_sample(3, 5000), loss_sample(3, 5000)
    assert len(a) == 512 and np.array_equal(a, b) and len(set(a.tolist())) == 512
    assert not np.array_equal(a, loss_sample(4, 5000))


def _problem(kind: str, d: int, k: int, hidden: tuple[int, ...], rows: int):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((rows, d))
    dims = [d, *hidden, k]
    ws = [rng.standard_normal((a, b)) * 0.7 for a, b in zip(dims[:-1], dims[1:], strict=True)]
    if kind == "logistic":
        y = (rng.random(rows) < 0.5).astype(np.float64)
    elif kind == "linear":
        y = x @ ws[0][:, 0] + rng.standard_normal(rows)
    else:
        y = rng.integers(0, k, rows).astype(np.float64)
    return x, y, ws


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("case", KINDS, ids=[c[0] for c in KINDS])
def test_secure_loss_matches_float64(case, n: int) -> None:
    kind, d, k, hidden = case
    rows = 600  # above the sample size: the sample is a strict subset
    x, y, ws = _problem(kind, d, k, hidden, rows)
    split = [rows // n * i for i in range(n)] + [rows]
    blocks = tuple(b - a for a, b in zip(split[:-1], split[1:], strict=True))
    layout = Layout("horizontal", blocks, rows, d, k, kind in ("softmax", "mlp"))
    sample = loss_sample(11, rows)

    def run(ctx, pid_rows):
        lo, hi = pid_rows
        data = mask_inputs(ctx, layout, None if ctx.dry else x[lo:hi],
                           None if ctx.dry else y[lo:hi], None)
        model = Model.from_public(ctx, kind, ws)
        return secure_loss(ctx, model, data, torch.from_numpy(sample))

    spans = [(split[i], split[i + 1]) for i in range(n)]
    res = simulate(n, run, spans)
    got = float(fixedpoint.decode(reconstruct(list(res)))[0])
    want = plain_loss(kind, ws, x[sample], y[sample], k)
    assert math.isfinite(want)
    assert abs(got - want) <= 1e-2 * max(1.0, abs(want)), (got, want)


def test_secure_loss_vertical_partition() -> None:
    """Columns split between two parties, labels held by party 1 only."""
    rows, d = 300, 6
    x, y, ws = _problem("logistic", d, 1, (), rows)
    layout = Layout("vertical", (2, 4), rows, d, 1, False)
    cols = [(0, 2), (2, 6)]
    sample = loss_sample(2, rows)

    def run(ctx, span):
        lo, hi = span
        feats = None if ctx.dry else x[:, lo:hi]
        labels = None if ctx.dry or ctx.pid != 1 else y
        data = mask_inputs(ctx, layout, feats, labels, 1)
        return secure_loss(ctx, Model.from_public(ctx, "logistic", ws), data,
                           torch.from_numpy(sample))

    res = simulate(2, run, cols)
    got = float(fixedpoint.decode(reconstruct(list(res)))[0])
    want = plain_loss("logistic", ws, x[sample], y[sample])
    assert abs(got - want) <= 1e-2, (got, want)
