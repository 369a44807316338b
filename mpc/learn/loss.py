"""Secure per-epoch training loss: the mean loss on a public sample of rows, as one shared scalar.

At the end of an epoch, with the current shared weights, the parties evaluate the model's loss
on a fixed sample of the training rows (``min(N, 512)`` rows drawn once from the scenario seed:
a public schedule, like the batch order) and sum it inside MPC; only that scalar is ever opened,
and only through the reveal policy (``what = "loss"``), by the caller. Whether the loss is
computed depends only on the public scenario, so the dealer's dry run requests the same material.

Losses (u = X w, the model's output; y the label, one-hot for classifiers):

* logistic: cross-entropy softplus(u) - y u, with softplus(u) = relu(u) + log(1 + e^-|u|) as
  one piecewise-linear function (19 knots on [-8, 8], max abs error 3.9e-3, as the
  training sigmoid's 3.4e-3; the mean over the sample is much closer) [SecureML17].
* linear: squared error (u - y)^2 with a dealer square pair [Bea91].
* softmax / MLP: cross-entropy logsumexp(h) - h_y = max_k h + log(sum_k e^(h_k - max)) - h_y,
  with the row max, exp and a piecewise-linear log on [1, K] (knots ~s/16 apart, max abs error
  4.1e-4) [CrypTen21].

Rounds per evaluation, n = 2 (n > 2 adds one truncation round per product and the mean):
logistic 1 + 4 + 1 = 6; linear 1 + 1 = 2; softmax 1 + 4 ceil(log2 K) + 8 + 4 + 1; MLP adds
4 + 1 per hidden layer. Preprocessing is that of the same operations on the sample.

The plaintext reference (:func:`reference_losses`) computes the same quantity in float64 on the
same sample with the reference training's weights after each epoch; it reads every party's data
and is for verification only. This module reveals nothing itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from mpc.learn.reference import train_reference
from mpc.learn.training import MaskedData, Model, _masked_product
from mpc.protocols.arith import matmul, mul, square, truncate
from mpc.protocols.compare import PiecewiseLinear, piecewise, relu
from mpc.protocols.context import PartyContext
from mpc.protocols.functions import exp
from mpc.protocols.rowmax import row_max

__all__ = [
    "LOSS_SAMPLE_ROWS",
    "LOG_INPUT_SCALE",
    "SOFTPLUS",
    "log_table",
    "loss_sample",
    "secure_loss",
    "epoch_loss_hook",
    "plain_loss",
    "reference_losses",
]

LOSS_SAMPLE_ROWS = 512
_MEAN_EXTRA_BITS = 8  # 1/m is applied with f + 8 bits, then one truncation


def _softplus_pl() -> PiecewiseLinear:
    """softplus(x) = relu(x) + log(1 + e^-|x|): the second term is symmetric and bounded (0 at
    +-inf), so a chord fit with constant ends serves; relu is one more slope step at 0."""
    side = [0.5, 1.0, 1.5, 2.0, 2.75, 3.5, 4.5, 6.0, 8.0]
    knots = sorted([-k for k in side] + [0.0] + side)
    fit = PiecewiseLinear.fit(lambda t: torch.log1p(torch.exp(-t.abs())), knots, 0.0, 0.0)
    zero = knots.index(0.0)
    slopes = tuple(s + (1.0 if i == zero else 0.0) for i, s in enumerate(fit.slope_steps))
    return PiecewiseLinear(fit.knots, slopes, fit.offset_steps)


SOFTPLUS = _softplus_pl()


LOG_INPUT_SCALE = 4  # the log table takes 4 s: relative knot spacing 1/16 at s = 1


def log_table(classes: int) -> PiecewiseLinear:
    """log(t / 4) for t = 4 s, s in [1, K] (a sum of K exponentials, one of them e^0).

    Knots are multiples of 0.25 (as thresholds must be) spaced about t / 16 apart, so each
    chord spans a relative step of ~1/16 wherever it is: max abs error 4.1e-4.
    """
    top = float(LOG_INPUT_SCALE * max(2, classes))
    knots = [float(LOG_INPUT_SCALE)]
    while knots[-1] < top:
        step = max(0.25, round(knots[-1] / 16 * 4) / 4)
        knots.append(min(top, knots[-1] + step))
    return PiecewiseLinear.fit(
        lambda t: torch.log(t / LOG_INPUT_SCALE), knots, 0.0, math.log(top / LOG_INPUT_SCALE)
    )


def loss_sample(seed: int, rows: int, size: int = LOSS_SAMPLE_ROWS) -> np.ndarray:
    """Public, sorted row indices of the loss sample: ``min(rows, size)`` rows from the seed."""
    if rows <= size:
        return np.arange(rows)
    return np.sort(np.random.default_rng([seed, 65537]).choice(rows, size, replace=False))


def _forward(
    ctx: PartyContext, model: Model, data: MaskedData, rows: torch.Tensor
) -> torch.Tensor:
    """Shares of the model's pre-activation output on ``rows`` (f fractional bits)."""
    ws = model.weights
    h = _masked_product(ctx, data, rows, ws[0], transpose=False)
    for w in ws[1:]:  # MLP: ReLU hidden layers
        a, _ = relu(ctx, h)
        if model.intercept:  # the public 1 column of the hidden layer (mpc.learn.training)
            ones = torch.full((a.shape[0], 1), ctx.fxp.scale if ctx.pid == 0 else 0)
            a = torch.cat([a, ones], 1)
        h = matmul(ctx, a, w)
    return h


def _mean(ctx: PartyContext, per_row: torch.Tensor) -> torch.Tensor:
    """Shares of the mean of ``per_row`` (f bits): local sum, then one public-factor truncation."""
    m = per_row.shape[0]
    total = per_row.sum().reshape(1)
    extra = _MEAN_EXTRA_BITS
    return truncate(ctx, total * round(2.0 ** (ctx.fxp.frac_bits + extra) / m),
                    ctx.fxp.frac_bits + extra)


def secure_loss(
    ctx: PartyContext, model: Model, data: MaskedData, rows: torch.Tensor
) -> torch.Tensor:
    """Shares (shape (1,), f fractional bits) of the model's mean training loss on ``rows``.

    Rounds and material: see the module docstring. Requires |loss sum| < 2^(45 - 8) (the mean's
    product stays below the 2^62 truncation bound), e.g. 512 rows with per-row loss below 2^27.
    """
    y = data.Y[rows]
    h = _forward(ctx, model, data, rows)
    kind = model.kind
    if kind == "logistic":
        per_row = (piecewise(ctx, h, SOFTPLUS) - mul(ctx, y, h))[:, 0]
    elif kind == "linear":
        per_row = square(ctx, h - y)[:, 0]
    else:  # softmax / mlp: logsumexp - h_y
        top = row_max(ctx, h)
        s = exp(ctx, h - top.unsqueeze(1)).sum(1)
        log_s = piecewise(ctx, s * LOG_INPUT_SCALE, log_table(h.shape[1]))
        per_row = top + log_s - mul(ctx, y, h).sum(1)
    return _mean(ctx, per_row)


def epoch_loss_hook(
    ctx: PartyContext,
    model: Model,
    data: MaskedData,
    seed: int,
    on_loss: Callable[[int, torch.Tensor], None] | None,
    stats: dict[str, int] | None = None,
) -> Callable[[int], None]:
    """An ``epoch_end`` hook for :func:`mpc.learn.training.train`: computes the epoch's loss share
    and
    hands it to ``on_loss(epoch, share)`` (None in the dealer's dry run). The loss computation's
    bytes sent/received and rounds are added to ``stats`` (kept apart from training's)."""
    rows = torch.from_numpy(loss_sample(seed, data.E.shape[0]))
    totals = stats if stats is not None else {}
    for key in ("bytes_sent", "bytes_received", "rounds"):
        totals.setdefault(key, 0)

    def hook(epoch: int) -> None:
        st = ctx.channel.stats
        before = (st.bytes_sent, st.bytes_received, st.rounds)
        share = secure_loss(ctx, model, data, rows)
        totals["bytes_sent"] += st.bytes_sent - before[0]
        totals["bytes_received"] += st.bytes_received - before[1]
        totals["rounds"] += st.rounds - before[2]
        if on_loss is not None and not ctx.dry:
            on_loss(epoch, share)

    return hook


def plain_loss(
    kind: str, weights: list[np.ndarray], x: np.ndarray, y: np.ndarray, outputs: int = 1,
    intercept: bool = False,
) -> float:
    """The same mean loss in float64 (exact softplus / logsumexp): the reference. With
    ``intercept``, x carries its 1 column and the hidden layers get one (bias rows last)."""
    h = x
    for i, w in enumerate(weights):
        if i:
            h = np.maximum(h, 0.0)
            if intercept:
                h = np.column_stack([h, np.ones(len(h))])
        h = h @ w
    if kind == "logistic":
        u = h[:, 0]
        return float(np.mean(np.logaddexp(0.0, u) - y * u))
    if kind == "linear":
        return float(np.mean((h[:, 0] - y) ** 2))
    top = h.max(1)
    lse = top + np.log(np.exp(h - top[:, None]).sum(1))
    return float(np.mean(lse - h[np.arange(len(h)), y.astype(np.int64)]))


def reference_losses(
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
) -> list[float]:
    """Per-epoch plaintext losses on the same sample, with the reference weights after each
    epoch (float64 training restarted for each prefix of epochs: the schedule is per epoch)."""
    idx = loss_sample(seed, x.shape[0])
    out = []
    for done in range(1, epochs + 1):
        ws = train_reference(kind, x, y, init, epochs=done, batch_size=batch_size,
                             learning_rate=learning_rate, seed=seed, shuffle=shuffle,
                             outputs=outputs, intercept=intercept)
        out.append(plain_loss(kind, ws, x[idx], y[idx], outputs, intercept))
    return out
