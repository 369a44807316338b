"""Secure mini-batch SGD with hand-derived gradients: linear, logistic, softmax, MLP.

Data are masked once for all epochs [SecureML17 sec. IV-A]: each data owner expands a mask A
for its own block from a seed it shares with the dealer only, publishes E = X - A, and from then
on X = E + A with E public (on disk) and A shared as (A, 0, ..., 0), regenerated per batch
(``mpc.learn.masked``). A batch product X_B W then costs one opening of W - V (|W| words) with
a dealer triple Z = A_B V, instead of opening B x d elements every step; likewise X_B^T R for
gradients.

Per logistic step (n = 2): open W - V (1 round), sigmoid (4), open R - V' (1): 6 rounds;
n > 2 needs an exact truncation of the update, whose opening shares the next step's opening of
W - V (``mpc.learn.folded``; the forward product's truncation shares the sigmoid's first round):
6 too, plus one round per epoch for its last update. Weights stay shared;
nothing is revealed here (see ``reveal`` in the party process, guarded by the policy).

Numeric safety: secure range checks at epoch ends (``mpc.protocols.rangecheck``, which also
lists what is recorded and why that suffices; ``train`` says which epochs end with one: at
least the last, and every epoch before a reveal); each opens a single bit and raises
:class:`~mpc.core.errors.NumericError` if anything failed, so a run never returns a model built on
a wrapped or out-of-domain value.

The learning rate: lr / B enters as an integer factor in [2^13, 2^14] with f + extra
fractional bits (``_step_factor``): relative error < 2^-14 for every lr >= 1e-4 and B <= 4096
(the scenario refuses others), on every path; the update's only other rounding is the
truncation's stochastic rounding, which is unbiased.

The schedule (batch order) is public and derived from the scenario seed, so the dealer's dry run
and the plaintext reference (``reference.py``) see the same batches.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from mpc.core import ring
from mpc.learn.folded import PendingUpdate, fused_product, fuses, settle
from mpc.learn.masked import Layout, MaskedData, mask_inputs
from mpc.protocols.arith import (
    matmul,
    matmuls,
    open_masked,
    truncate,
    truncate_then_mul,
)
from mpc.protocols.compare import relu
from mpc.protocols.context import PartyContext
from mpc.protocols.functions import sigmoid, softmax_rows
from mpc.protocols.rangecheck import CHECK_CHUNK, RangeGuard

__all__ = [
    "Layout",
    "MaskedData",
    "mask_inputs",
    "batch_schedule",
    "initial_weights",
    "Model",
    "TrainCounters",
    "train",
]

log = logging.getLogger(__name__)


def batch_schedule(
    seed: int, epoch: int, rows: int, batch: int, shuffle: bool
) -> list[np.ndarray]:
    """Public batch order of one epoch (same for parties, dealer and plaintext reference)."""
    order = np.random.default_rng([seed, epoch]).permutation(rows) if shuffle else np.arange(rows)
    return [order[i : i + batch] for i in range(0, rows, batch)]


def initial_weights(
    seed: int, shapes: Sequence[tuple[int, int]], init: str, scale: float | None
) -> list[np.ndarray]:
    """Public initial weights (zeros, or normal with He scale) from the scenario seed."""
    rng = np.random.default_rng([seed, 7919])
    out = []
    for fan_in, fan_out in shapes:
        if init == "zeros":
            out.append(np.zeros((fan_in, fan_out)))
        else:
            std = scale if scale is not None else float(np.sqrt(2.0 / fan_in))
            out.append(rng.standard_normal((fan_in, fan_out)) * std)
    return out


def _masked_product(
    ctx: PartyContext,
    data: MaskedData,
    rows: torch.Tensor,
    w: torch.Tensor,
    transpose: bool,
    scaled: bool = True,
) -> torch.Tensor:
    """X_B w (or X_B^T w) for shared w, with a dealer triple on the data mask: 1 round.

    ``scaled=False`` leaves the result at 2f fractional bits (no truncation).
    """
    E_b, A_b = data.rows(rows)
    if transpose:
        E_b, A_b = E_b.T, A_b.T
    v = ctx.pre.random(tuple(w.shape))
    z = ctx.pre.correlated("triple/data", (E_b.shape[0], w.shape[1]), lambda: ring.matmul(A_b, v))
    if ctx.dry:  # the dealer's dry run needs only the material (truncation's too)
        out = torch.zeros_like(z)
    else:
        (f,) = open_masked(ctx, "data", [w - v])
        # (E + A)(f + v) with E public, f public: E [w] + [A] f + [A v], summed over parties.
        out = ring.matmul(E_b, w) + ring.matmul(A_b, f) + z
    return truncate(ctx, out) if scaled else out


FACTOR_BITS = 13  # lr / B is applied as factor / 2^(f + extra), factor in [2^13, 2^14)
ACTIVATION_BITS = 13  # |inputs of sigmoid, ReLU, linear output| < 2^13 (comparison: 2^14)
LOGIT_BITS = 7  # |softmax logits| < 128, so logit - row max > -256 (exp's domain)
WEIGHT_BITS = 13  # |weights| < 2^13 at the end of every epoch


def _step_factor(scale: float, f: int) -> tuple[int, int]:
    """(factor, extra) with factor = round(scale * 2^(f + extra)) in [2^13, 2^14]: lr / B
    with a relative rounding error below 2^-14 (0.006 %) for any scale in [2^-30, 2^12)."""
    if not 2.0**-30 <= scale < 2.0**12:
        raise ValueError(f"learning rate / batch size {scale:.3g} outside [2^-30, 2^12)")
    extra = FACTOR_BITS - f - math.floor(math.log2(scale))
    return round(scale * 2.0 ** (f + extra)), extra


def _sgd_update(
    ctx: PartyContext, w: torch.Tensor, grad_2f: torch.Tensor, scale: float, guard: RangeGuard
) -> torch.Tensor:
    """w - scale * grad for a gradient at 2f fractional bits, with scale = lr / B applied as
    an integer factor (``_step_factor``) and the truncations' stochastic rounding (unbiased:
    each result rounds up with probability equal to the dropped fraction, for uniform shares).

    n = 2: two local truncations (free), by f and by f + extra, covered by the epoch's range
    check (a wrap would add 2^(64 - k)). n > 2: one exact dealer truncation
    by 2f + extra of factor * grad (1 round); its input is checked against 2^61 (the
    truncation needs 2^62), i.e. |grad| < 2^(61 - 3f - extra) / scale ~ 2^15 in real terms.
    """
    f = ctx.fxp.frac_bits
    factor, extra = _step_factor(scale, f)
    if ctx.truncate_locally:
        g = truncate(ctx, grad_2f)
        update = truncate(ctx, g * factor, f + extra)
        # A wrap of g moves w by >= 2^(61 - k) ring units (k = f + extra), one of the update
        # by 2^(64 - k), and stays in w to the end of the epoch: the weights' check sees it
        # when 2^(61 - k) > 2^(f + WEIGHT_BITS + 1). Only smaller steps need their own records.
        if f + extra > 61 - (f + WEIGHT_BITS) - 2:
            guard.record_truncated(g, f)
            guard.record_truncated(update, f + extra)
        return w - update
    product = grad_2f * factor
    guard.record_wide(product)
    return w - truncate(ctx, product, 2 * f + extra)


def _sgd_updates(
    ctx: PartyContext,
    ws: list[torch.Tensor],
    grads: list[torch.Tensor],
    scale: float,
    guard: RangeGuard,
) -> list[torch.Tensor]:
    """:func:`_sgd_update` for several layers; n > 2: their truncations share one round."""
    if ctx.truncate_locally or len(ws) == 1:
        return [_sgd_update(ctx, w, g, scale, guard) for w, g in zip(ws, grads, strict=True)]
    f = ctx.fxp.frac_bits
    factor, extra = _step_factor(scale, f)
    products = [g * factor for g in grads]
    for product in products:
        guard.record_wide(product)
    flat = truncate(ctx, torch.cat([p.reshape(-1) for p in products]), 2 * f + extra)
    out, at = [], 0
    for w in ws:
        out.append(w - flat[at : at + w.numel()].reshape(w.shape))
        at += w.numel()
    return out


@dataclass
class Model:
    """Shared weights of a model: one matrix per layer (with ``intercept``, a bias row last)."""

    kind: str
    weights: list[torch.Tensor]
    names: list[str] = field(default_factory=list)
    # intercept: the last row of every matrix is the bias (inputs carry a public 1 column)
    intercept: bool = False

    @classmethod
    def from_public(
        cls, ctx: PartyContext, kind: str, init: list[np.ndarray], intercept: bool = False
    ) -> Model:
        enc = [ctx.fxp.encode(w, what="initial weights") for w in init]
        weights = [w if ctx.pid == 0 else torch.zeros_like(w) for w in enc]
        names = ["w"] if len(init) == 1 else [f"w{i + 1}" for i in range(len(init))]
        return cls(kind, weights, names, intercept)


def _bits(ctx: PartyContext, real_bits: int) -> int:
    """A bound of 2^real_bits in real terms, in ring units (at least the check's 2^14)."""
    return max(14, ctx.fxp.frac_bits + real_bits)


def _step(
    ctx: PartyContext,
    model: Model,
    data: MaskedData,
    rows: torch.Tensor,
    lr: float,
    guard: RangeGuard,
    pending: PendingUpdate | None = None,
) -> PendingUpdate | None:
    """One SGD step. n > 2, logistic and linear: returns the update still to be applied
    (``mpc.learn.folded``), which the next step (``pending``) or ``settle`` applies."""
    scale = lr / len(rows)
    y_b = data.Y[rows]
    if not ctx.truncate_locally and model.kind in ("logistic", "linear"):
        return _folded_update(ctx, model, data, rows, y_b, scale, guard, pending)
    if pending is not None:
        raise ValueError(f"{model.kind}: no pending update expected")
    if model.kind == "mlp":
        _mlp_step(ctx, model, data, rows, y_b, scale, guard)
        return None
    (w,) = model.weights
    # n > 2: softmax's logits stay at 2f bits, truncated inside its first comparison
    fused = ctx.fxp.frac_bits if model.kind == "softmax" and not ctx.truncate_locally else 0
    u = _masked_product(ctx, data, rows, w, transpose=False, scaled=not fused)
    if model.kind == "logistic":
        guard.record(u, _bits(ctx, ACTIVATION_BITS))
        p = sigmoid(ctx, u)
        guard.record_truncated(p, ctx.fxp.frac_bits)
    elif model.kind == "softmax":
        guard.record(u, _bits(ctx, LOGIT_BITS) + fused)
        p = softmax_rows(ctx, u, input_bits=fused)
        guard.record_truncated(p, ctx.fxp.frac_bits)
    else:
        guard.record(u, _bits(ctx, ACTIVATION_BITS))
        p = u
    grad = _masked_product(ctx, data, rows, p - y_b, transpose=True, scaled=False)
    model.weights[0] = _sgd_update(ctx, w, grad, scale, guard)
    return None


def _folded_update(
    ctx: PartyContext,
    model: Model,
    data: MaskedData,
    rows: torch.Tensor,
    y_b: torch.Tensor,
    scale: float,
    guard: RangeGuard,
    pending: PendingUpdate | None,
) -> PendingUpdate:
    """n > 2: fold lr/B into the residual so one truncation per step serves the activation and
    the update (saves a round); for logistic, the truncation of X_B w is fused with the
    sigmoid's first comparison round (saves another), and the previous step's update is
    applied in this step's first round (``mpc.learn.folded``; saves a third): 1 + 4 + 1 = 6
    rounds (the first step of an epoch settles nothing; the last one's update is settled by
    its own round, ``train``). Returns this step's update, not yet applied.
    r = scale * (p - y) is formed at 2f fractional bits: the
    activation's coefficients carry the scale with ``extra`` more fractional bits (so that
    scale * 2^(f + extra) is in [2^13, 2^14], see ``_step_factor``), and scale * y is a
    public-times-share product. X^T r then has 3f + extra bits; it is checked against 2^61
    (the truncation needs 2^62), i.e. |X^T (p - y)| < ~2^15; one exact dealer truncation by
    2f + extra yields the update."""
    f = ctx.fxp.frac_bits
    factor, extra = _step_factor(scale, f)
    w = model.weights[0]
    if pending is not None and fuses(len(rows), w):
        model.weights[0], u_2f = fused_product(ctx, data, rows, w, pending)
    else:
        if pending is not None:  # a wide model: M would cost more than the round
            w = model.weights[0] = settle(ctx, w, pending)
        u_2f = _masked_product(ctx, data, rows, w, transpose=False, scaled=False)
    if model.kind == "logistic":
        guard.record(u_2f, min(_bits(ctx, ACTIVATION_BITS) + f, 47))
        acc = sigmoid(ctx, u_2f, scale=scale, truncated=False, extra_bits=extra, input_bits=f)
    else:
        u = truncate(ctx, u_2f)
        guard.record(u, _bits(ctx, ACTIVATION_BITS))
        acc = u * factor
    residual = acc - y_b * factor
    grad = _masked_product(ctx, data, rows, residual, transpose=True, scaled=False)
    guard.record_wide(grad)
    return PendingUpdate.of(ctx, grad, 2 * f + extra)


def _mlp_step(
    ctx: PartyContext,
    model: Model,
    data: MaskedData,
    rows: torch.Tensor,
    y_b: torch.Tensor,
    scale: float,
    guard: RangeGuard,
) -> None:
    """ReLU hidden layers, softmax output; backprop with Beaver matmuls and ReLU bits."""
    ws = model.weights
    acts = []
    derivs = []
    # n > 2: hidden pre-activations stay at 2f bits and ReLU truncates them (exactly) inside
    # its own opening, saving a round per layer; n = 2 truncates locally (free, and the
    # truncated value is what the range check must see).
    fused = ctx.fxp.frac_bits if not ctx.truncate_locally else 0
    h = _masked_product(ctx, data, rows, ws[0], transpose=False, scaled=not fused)
    for w in ws[1:]:
        guard.record(h, _bits(ctx, ACTIVATION_BITS) + fused)
        a, bit = relu(ctx, h, input_bits=fused)
        if model.intercept:  # public 1 column (party 0 holds the encoding) carries the bias
            ones = torch.full((a.shape[0], 1), ctx.fxp.scale if ctx.pid == 0 else 0)
            a = torch.cat([a, ones], 1)
        acts.append(a)
        derivs.append(bit)
        # n > 2: every layer's output stays at 2f bits (the logits are truncated inside
        # softmax's first comparison)
        h = matmul(ctx, a, w, scaled=not fused)
    guard.record(h, _bits(ctx, LOGIT_BITS) + fused)
    p = softmax_rows(ctx, h, input_bits=fused)
    guard.record_truncated(p, ctx.fxp.frac_bits)
    delta = p - y_b
    grads: list[torch.Tensor] = [torch.empty(0)] * len(ws)
    for layer in range(len(ws) - 1, 0, -1):
        a = acts[layer - 1]
        # one round for both products: delta is masked and opened once
        grads[layer], back = matmuls(
            ctx, [(a.T.contiguous(), delta), (delta, ws[layer].T.contiguous())],
            scaled=[False, False])
        if model.intercept:
            back = back[:, :-1].contiguous()  # the bias column has no predecessor
        # back (2f bits) is truncated inside the product's opening (n > 2: no extra round);
        # times the 0/1 ReLU bit it stays at f bits
        delta, back = truncate_then_mul(ctx, back, ctx.fxp.frac_bits, derivs[layer - 1])
        guard.record_truncated(back, ctx.fxp.frac_bits)
    grads[0] = _masked_product(ctx, data, rows, delta, transpose=True, scaled=False)
    model.weights = _sgd_updates(ctx, ws, grads, scale, guard)


def _end_epoch(ctx: PartyContext, model: Model, guard: RangeGuard, first: int, epoch: int,
               due: bool) -> bool:
    """Record the weights as they leave the epoch, then check everything recorded since
    epoch ``first`` (0-based; a failure names the epochs) when ``due`` or when at least
    ``CHECK_CHUNK`` level inputs are pending (a public count). Returns whether it checked."""
    for w in model.weights:
        guard.record(w, _bits(ctx, WEIGHT_BITS))
    if not (due or guard.pending >= CHECK_CHUNK):
        return False
    guard.check(ctx, f"epoch {epoch + 1}" if first == epoch
                else f"epochs {first + 1}-{epoch + 1}")
    return True


@dataclass
class TrainCounters:
    """What the training steps cost this party, apart from the range checks at epoch ends:
    the report's ``rounds_per_step`` (data masking, preparation, PSI, loss, evaluation and
    the final reveal are outside ``train``; range checks are counted on their own)."""

    steps: int = 0
    step_rounds: int = 0
    step_bytes_sent: int = 0
    step_dealer_bytes: int = 0  # preprocessing received from the dealer during the steps
    epochs: int = 0
    check_rounds: int = 0
    check_bytes_sent: int = 0

    def _mark(self, ctx: PartyContext) -> tuple[int, int, int]:
        return ctx.stats.rounds, ctx.stats.bytes_sent, ctx.pre.received

    def as_dict(self) -> dict[str, float | int]:
        steps, epochs = max(self.steps, 1), max(self.epochs, 1)
        return {
            "steps": self.steps,
            "rounds_per_step": self.step_rounds / steps,
            "bytes_sent_per_step": self.step_bytes_sent / steps,
            "dealer_bytes_per_step": self.step_dealer_bytes / steps,
            "range_check_rounds_per_epoch": self.check_rounds / epochs,
            "range_check_bytes_sent_per_epoch": self.check_bytes_sent / epochs,
        }


class DPHooks(Protocol):
    """What ``train`` needs of a DP-SGD run (``mpc.learn.dp.DPTraining``)."""

    def batches(self, epoch: int, rows: int) -> list[np.ndarray]: ...

    def step(self, ctx: PartyContext, model: Model, data: MaskedData, rows: torch.Tensor,
             lr: float, guard: RangeGuard) -> None: ...


def train(
    ctx: PartyContext,
    model: Model,
    data: MaskedData,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    shuffle: bool = True,
    on_epoch: Callable[[int, float], None] | None = None,
    epoch_end: Callable[[int], None] | None = None,
    dp: DPHooks | None = None,
    counters: TrainCounters | None = None,
) -> Model:
    """Run mini-batch SGD for ``epochs``; ``on_epoch(epoch, seconds)`` after each epoch.

    The secure range check of everything recorded (13 rounds for 2 parties, 17 for more; see
    ``mpc.protocols.rangecheck``) runs at the end of the last epoch, of every epoch followed by
    ``epoch_end``, and of every epoch that leaves at least ``CHECK_CHUNK`` level inputs
    pending (one comparison call's worth: a large epoch is checked on its own, as before, while
    the epochs of a small dataset share one check instead of paying 13 rounds each):
    :class:`~mpc.core.errors.NumericError` if a value left its domain or a local truncation
    wrapped, before anything is revealed. The schedule depends on public sizes only, so the
    dealer's dry run requests the same material. ``epoch_end(epoch)`` runs after the epoch's
    steps and its range check, before ``on_epoch`` (e.g. the secure loss of
    ``mpc.learn.loss``, a reveal: its epoch is always checked first); its time is not counted
    in ``seconds``.
    ``dp`` (``mpc.learn.dp.DPTraining``) replaces the public batch order and the step by DP-SGD's.
    ``counters`` (:class:`TrainCounters`) receives the steps' and range checks' traffic.
    """
    rows = data.E.shape[0]
    guard = RangeGuard(dry=ctx.dry)
    unchecked = 0  # the first epoch whose values await a check
    for epoch in range(epochs):
        start = time.perf_counter()
        count = counters if counters is not None else TrainCounters()
        mark = count._mark(ctx)
        if dp is not None:
            for batch in dp.batches(epoch, rows):
                dp.step(ctx, model, data, torch.from_numpy(batch), learning_rate, guard)
                count.steps += 1
        else:
            pending = None
            for batch in batch_schedule(seed, epoch, rows, batch_size, shuffle):
                pending = _step(ctx, model, data, torch.from_numpy(batch), learning_rate,
                                guard, pending)
                count.steps += 1
            if pending is not None:  # the epoch's last update, before its weights are read
                model.weights[0] = settle(ctx, model.weights[0], pending)
        now = count._mark(ctx)
        count.step_rounds += now[0] - mark[0]
        count.step_bytes_sent += now[1] - mark[1]
        count.step_dealer_bytes += now[2] - mark[2]
        if _end_epoch(ctx, model, guard, unchecked, epoch,
                      due=epoch == epochs - 1 or epoch_end is not None):
            unchecked = epoch + 1
        after = count._mark(ctx)
        count.epochs += 1
        count.check_rounds += after[0] - now[0]
        count.check_bytes_sent += after[1] - now[1]
        seconds = time.perf_counter() - start
        if epoch_end is not None:
            epoch_end(epoch)
        if on_epoch is not None:
            on_epoch(epoch, seconds)
    return model
