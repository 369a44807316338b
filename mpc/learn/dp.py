"""DP-SGD inside MPC [ACG+16]: per-example clipping, Poisson batches, jointly drawn noise.

Linear and logistic models (horizontal partition). The per-example gradient of row i is r_i x_i
(r_i the residual p_i - y_i), so its L2 norm is |r_i| ||x_i||; clipping it to C is the same as
clamping r_i to [-c_i, c_i] with c_i = C / ||x_i|| (norm over every training column). Each
row's owner computes c_i in plaintext once (horizontal partition), rounds it down on the fixed-
point grid (2 ulps below, to absorb the rounding of the clamp's fused truncation) and secret-
shares it (:func:`share_thresholds`, 1 round, once). Per step:

* clamp(r, -c, c) = relu(r + c) - relu(r - c) - c from ONE comparison call on the stacked
  (r - c, r + c) (``compare.compare_thresholds``, which returns the products b * x as well):
  4 rounds, no further product; for n > 2 the truncation of r (at 2f bits after the sigmoid)
  is fused into its opening.
* The clipped sum G = X_B^T clamp(r) is exact in the ring (2f fractional bits), so one row
  changes it by a vector of L2 norm <= C * 2^(2f) ring units.
* Every party adds to its own share of G a discrete Gaussian draw (``mpc.core.noise``) of variance
  (sigma C 2^(2f))^2 / (n - collusion): local, no round.
* w -= lr / B * (G + noise) with B the *expected* batch size (``training._sgd_update``).

Logistic: 10 rounds per step for n = 2 (6 without DP), 11 for n > 2 (7): 4 extra rounds, all
in the clamp's comparison. Linear: the same 4 extra.

Softmax (and logistic on a vertical partition): the per-example gradient x_i r_i^T has norm
||x_i|| ||r_i||; the owners share ||x_i||^2 / C^2 (vertical: each its partial sum over its own
columns, added in shares) and :func:`clip_rows` scales r_i by min(1, C / (||x_i|| ||r_i||))
computed in MPC, conservatively (never above the exact factor, then 1 - 2^-7 for rounding).
MLP: :func:`mlp_clipped_gradients` (per-layer ||a_i|| ||delta_i||, the same factor).

Batches: each step includes every row independently with probability q = B / N (Poisson
sampling, as the accountant assumes), from an AES-CTR stream keyed by a seed the dealer draws
from OS entropy and sends to the parties only: the launcher (the weight recipient) never
learns which rows were used. The dealer needs the batches for its material and never sees the
weights; a dealer colluding with the launcher is outside this guarantee for the sampling
amplification (not for the noise, which it never learns).

Not done here: accounting (``mpc.config.accountant``), configuration (``mpc.config.privacy``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mpc.core.errors import ConfigError
from mpc.core.noise import discrete_gaussian, party_scale
from mpc.core.prg import PRG, derive_seed, fresh_seed
from mpc.learn.training import (
    ACTIVATION_BITS,
    LOGIT_BITS,
    Layout,
    MaskedData,
    Model,
    _bits,
    _masked_product,
    _sgd_update,
)
from mpc.protocols.arith import add_public, matmul, mul, truncate
from mpc.protocols.compare import compare_thresholds, relu
from mpc.protocols.context import PartyContext
from mpc.protocols.functions import sigmoid, softmax_rows
from mpc.protocols.rangecheck import RangeGuard

__all__ = [
    "THRESHOLD_CAP",
    "NORM_RATIO_CAP",
    "row_thresholds",
    "row_norm_ratios",
    "clip_rows",
    "clip_factor",
    "share_thresholds",
    "poisson_batches",
    "clamp",
    "DPTraining",
    "mlp_clipped_gradients",
]

# c_i above this changes nothing for logistic (|r| <= 1) and keeps |r +- c| inside the
# comparison's domain (2^14) for linear residuals (|r| < 2^13, range-checked).
THRESHOLD_CAP = 64.0
_SLACK = 2  # ulps: the clamp's output exceeds c by at most 1 ulp (independent roundings)
# Softmax: ||x_i||^2 / C^2 <= 2^10 (||x_i|| <= 32 C), so u = ||r_i||^2 ||x_i||^2 / C^2 < 2^13
# stays in the comparison's domain and u at 3f bits below the truncation's 2^62.
NORM_RATIO_CAP = 2.0**10
_KNOTS = tuple(4.0**j for j in range(7))  # 1, 4, ..., 4096: the initial guess of 1/sqrt(m)
_NEWTON = 5  # iterations from within a factor 2 below: relative error ~1e-6
_SAFETY = 1 - 2.0**-7  # covers the fixed-point rounding of u, the iterations and the product


def row_thresholds(encoded: torch.Tensor, clip: float, frac_bits: int) -> torch.Tensor:
    """Ring values (f bits) of c_i = C / ||x_i||, rounded down by 2 ulps, capped at
    :data:`THRESHOLD_CAP`, for the owner's encoded rows (int64, rows x features)."""
    x = encoded.to(torch.float64) / 2.0**frac_bits
    norm = torch.linalg.vector_norm(x, dim=1)
    cap = THRESHOLD_CAP * 2.0**frac_bits
    c = torch.where(norm > 0, clip * 2.0**frac_bits / norm.clamp_min(1e-300),
                    torch.full_like(norm, cap))
    c = torch.floor(c.clamp(max=cap)) - _SLACK
    return c.clamp_min(0).to(torch.int64).reshape(-1, 1)


def row_norm_ratios(encoded: torch.Tensor, clip: float, frac_bits: int) -> torch.Tensor:
    """Ring values (f bits) of ||x_i||^2 / C^2 rounded up by 2 ulps (softmax clipping; for a
    vertical partition the partial sum over the owner's columns).

    Raises ConfigError (on the owner, before any training message) if a row exceeds
    :data:`NORM_RATIO_CAP`, i.e. ||x_i|| > 32 C: the clipping factor's domain.
    """
    x = encoded.to(torch.float64) / 2.0**frac_bits
    ratio = (x * x).sum(1) / clip**2
    if ratio.numel() and float(ratio.max()) > NORM_RATIO_CAP:
        raise ConfigError(f"privacy.clip = {clip:g}: some row's feature norm exceeds "
                          f"{math.sqrt(NORM_RATIO_CAP):g} * clip (the softmax clipping domain); "
                          "raise privacy.clip or scale the features")
    return (torch.ceil(ratio * 2.0**frac_bits) + _SLACK).to(torch.int64).reshape(-1, 1)


def clip_rows(ctx: PartyContext, r: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Shares of r_i * min(1, 1 / sqrt(||r_i||^2 ratio_i)) * (1 - 2^-7) for a (B, K) residual
    r (f bits) and shared ratio_i = ||x_i||^2 / C^2 (f bits): every row's outer product
    x_i r_i^T then has Frobenius norm <= C.

    u = ||r||^2 ratio exactly at 3f bits (2 products, no truncation), the factor by
    :func:`clip_factor`, then the product with r: 1 + 1 + 19 + 1 rounds for n = 2.
    """
    s_2f = mul(ctx, r, r, scaled=False).sum(1, keepdim=True)  # ||r||^2 at 2f bits
    u_3f = mul(ctx, s_2f, ratio, scaled=False)
    return mul(ctx, r, clip_factor(ctx, u_3f).expand_as(r))


def clip_factor(ctx: PartyContext, u_3f: torch.Tensor) -> torch.Tensor:
    """Shares of min(1, 1 / sqrt(u)) * (1 - 2^-7) (f bits) for u given at 3f fractional
    bits, 0 <= u < 2^13 (a squared per-example norm over C^2).

    One comparison call against 1, 4, ..., 4^6 with the exact truncation by 2f fused
    [``compare_thresholds``] gives m = max(u, 1) and a first guess of 1/sqrt(m) within a
    factor 2 below; 5 Newton steps y <- y (3 - m y^2) / 2 (never above 1/sqrt(m), whatever
    y: the map's maximum); the factor 1 - 2^-7 covers the fixed-point roundings. 4 + 5 * 3
    rounds for n = 2 (+ the products' truncations for n > 2).
    """
    fxp, f = ctx.fxp, ctx.fxp.frac_bits
    bits, products = compare_thresholds(ctx, u_3f, _KNOTS, truncate_bits=2 * f,
                                        exact_truncation=True)
    if products is None:
        raise ValueError("clip_factor: comparison returned no products")
    one = int(fxp.encode(1.0))
    m = products[0] + add_public(ctx, -bits[0] * one, one)  # max(u, 1)
    steps = [int(fxp.encode(2.0 ** -(k + 1))) for k in range(len(_KNOTS))]
    drops = torch.tensor([steps[k - 1] - steps[k] for k in range(1, len(_KNOTS))])
    y = add_public(ctx, -(bits[1:] * drops.reshape((-1,) + (1,) * u_3f.dim())).sum(0),
                   steps[0])
    three_halves, half = int(fxp.encode(1.5)), int(fxp.encode(0.5))
    for _ in range(_NEWTON):
        my, yy = mul(ctx, torch.stack([m, y]), torch.stack([y, y]))
        my3 = mul(ctx, my, yy)
        y = truncate(ctx, y * three_halves - my3 * half)
    return truncate(ctx, y * int(fxp.encode(_SAFETY)))


def share_thresholds(ctx: PartyContext, layout: Layout, mine: torch.Tensor | None) -> torch.Tensor:
    """Shares of every row's clipping bound (N x 1) from the owners' plaintext values: 1 round.

    Horizontal: each owner splits its rows' bounds. Vertical: every party splits its per-row
    partial ||x_i||^2 / C^2 over its own columns (``row_norm_ratios``), and the shares are
    summed: the total ratio is never opened. Shares are AES-CTR output from a fresh
    OS-entropy seed; each party sends one share of its block to each peer.
    """
    vertical = layout.partition == "vertical"
    spans = [(0, layout.rows)] * ctx.n if vertical else layout.row_ranges()
    lo, hi = spans[ctx.pid]
    own = torch.zeros((hi - lo, 1), dtype=torch.int64) if mine is None or ctx.dry else mine
    if tuple(own.shape) != (hi - lo, 1):
        raise ValueError(f"{ctx.name}: clipping bounds have shape {tuple(own.shape)}")
    prg = PRG(fresh_seed())
    outgoing = {p: [prg.ring(own.shape)] for p in ctx.channel.peers}
    keep = own - sum((s[0] for s in outgoing.values()), torch.zeros_like(own))
    got = ctx.channel.exchange(
        "dp/clip", outgoing, {p: [(spans[p][1] - spans[p][0], 1)] for p in ctx.channel.peers})
    if vertical:
        return keep + sum((got[p][0] for p in ctx.channel.peers), torch.zeros_like(keep))
    return torch.cat([keep if p == ctx.pid else got[p][0] for p in range(ctx.n)])


def poisson_batches(seed: bytes, epoch: int, rows: int, batch_size: int) -> list[np.ndarray]:
    """One epoch's ceil(N / B) Poisson batches: row i is in a batch with probability B / N,
    independently, from AES-CTR keyed by ``seed`` (secret from the weight recipient)."""
    steps = math.ceil(rows / batch_size)
    prg = PRG(derive_seed(seed, f"dp/batches/{epoch}"))
    draws = prg.below((steps, rows), 53).numpy()
    take = draws < round(batch_size / rows * 2.0**53)
    return [np.nonzero(row)[0].astype(np.int64) for row in take]


def clamp(ctx: PartyContext, r: torch.Tensor, c: torch.Tensor, truncate_bits: int = 0
          ) -> torch.Tensor:
    """Shares of clamp(r', -c, c) with r' = r / 2^truncate_bits, c >= 0 shared (f bits): 4
    rounds (one comparison call on (r' - c, r' + c), its products give both ReLUs).

    Requires |r'| + c < 2^14 (real). A fused truncation (n > 2) rounds r' - c and r' + c
    independently: the result then lies within c + 1 ulp of 0 (``row_thresholds``'s slack).
    """
    shifted = c << truncate_bits
    x = torch.stack([r - shifted, r + shifted])
    fuse = truncate_bits and not ctx.truncate_locally
    if truncate_bits and not fuse:
        raise ValueError("clamp: truncate r first for n = 2 (local truncations are checked)")
    _, products = compare_thresholds(ctx, x, [0.0], truncate_bits=truncate_bits)
    if products is None:
        raise ValueError("clamp: comparison returned no products")
    return products[0][1] - products[0][0] - c


@dataclass
class DPTraining:
    """The DP-SGD step and batch schedule of one run (shared clipping bounds included)."""

    noise_multiplier: float
    clip: float
    collusion: int
    batch_size: int
    seed: bytes
    thresholds: torch.Tensor
    # True: ``thresholds`` are ||x_i||^2 / C^2 (``row_norm_ratios``, softmax and vertical
    # partitions) and rows are clipped by ``clip_rows``; False: c_i for ``clamp``.
    ratios: bool = False

    def batches(self, epoch: int, rows: int) -> list[np.ndarray]:
        return poisson_batches(self.seed, epoch, rows, self.batch_size)

    def noise(self, ctx: PartyContext, shape: tuple[int, ...]) -> torch.Tensor:
        """This party's noise share at 2f fractional bits (zeros in the dealer's dry run)."""
        if ctx.dry:
            return torch.zeros(shape, dtype=torch.int64)
        bits = 2 * ctx.fxp.frac_bits
        return discrete_gaussian(
            shape, party_scale(self.noise_multiplier, self.clip, bits, ctx.n, self.collusion))

    def clipped_residual(self, ctx: PartyContext, model: Model, data: MaskedData,
                         rows: torch.Tensor, guard: RangeGuard) -> torch.Tensor:
        """Shares of the batch's clipped residuals (f bits): clamp(p - y, -c, c), or for
        softmax the rows of p - y scaled by min(1, C / (||x_i|| ||r_i||))."""
        f = ctx.fxp.frac_bits
        (w,) = model.weights
        y_b, c_b = data.Y[rows], self.thresholds[rows]
        if model.kind == "softmax" or self.ratios:  # thresholds: ||x_i||^2 / C^2
            # A vertical partition's ratio is a sum of the parties' partial ratios: its
            # domain (2^11 > NORM_RATIO_CAP) is checked with the epoch's range check.
            guard.record(c_b, _bits(ctx, 11))
            u = _masked_product(ctx, data, rows, w, transpose=False)
            if model.kind == "softmax":
                guard.record(u, _bits(ctx, LOGIT_BITS))
                p = softmax_rows(ctx, u)
                guard.record_truncated(p, f)
            elif model.kind == "logistic":
                guard.record(u, _bits(ctx, ACTIVATION_BITS))
                p = sigmoid(ctx, u)
                guard.record_truncated(p, f)
            else:
                raise ConfigError(f"{ctx.name}: DP-SGD of a linear model needs a horizontal "
                                  "partition (its residual is not bounded)")
            return clip_rows(ctx, p - y_b, c_b)
        if model.kind == "linear":
            u = _masked_product(ctx, data, rows, w, transpose=False)
            guard.record(u, _bits(ctx, ACTIVATION_BITS))
            residual = u - y_b
            guard.record(residual, _bits(ctx, ACTIVATION_BITS))
            return clamp(ctx, residual, c_b)
        if ctx.truncate_locally:  # n = 2: local truncations, each one recorded for the check
            u = _masked_product(ctx, data, rows, w, transpose=False)
            guard.record(u, _bits(ctx, ACTIVATION_BITS))
            r_2f = sigmoid(ctx, u, truncated=False) - (y_b << f)
            r = truncate(ctx, r_2f)
            guard.record_truncated(r, f)
            return clamp(ctx, r, c_b)
        u_2f = _masked_product(ctx, data, rows, w, transpose=False, scaled=False)
        guard.record(u_2f, min(_bits(ctx, ACTIVATION_BITS) + f, 47))
        r_2f = sigmoid(ctx, u_2f, truncated=False, input_bits=f) - (y_b << f)
        return clamp(ctx, r_2f, c_b, truncate_bits=f)

    def step(self, ctx: PartyContext, model: Model, data: MaskedData, rows: torch.Tensor,
             lr: float, guard: RangeGuard) -> None:
        """One DP-SGD step: w -= lr / B * (sum of clipped per-example gradients + noise)."""
        scale = lr / self.batch_size
        if model.kind == "mlp":
            if len(rows):
                grads = mlp_clipped_gradients(ctx, model, data, rows, self.thresholds[rows],
                                              self.clip, guard)
            else:
                grads = [torch.zeros_like(w) for w in model.weights]
            for i, g in enumerate(grads):
                g = g + self.noise(ctx, tuple(g.shape))
                model.weights[i] = _sgd_update(ctx, model.weights[i], g, scale, guard)
            return
        (w,) = model.weights
        if len(rows):
            r = self.clipped_residual(ctx, model, data, rows, guard)
            grad = _masked_product(ctx, data, rows, r, transpose=True, scaled=False)
        else:  # an empty Poisson batch: the step is noise only
            grad = torch.zeros_like(w)
        grad = grad + self.noise(ctx, tuple(grad.shape))
        model.weights[0] = _sgd_update(ctx, w, grad, scale, guard)


def mlp_clipped_gradients(ctx: PartyContext, model: Model, data: MaskedData, rows: torch.Tensor,
                          ratio: torch.Tensor, clip: float, guard: RangeGuard
                          ) -> list[torch.Tensor]:
    """Shares of every MLP layer's sum of clipped per-example gradients (2f bits).

    Per-example norms without per-example gradients: layer l's per-example gradient is
    a_i delta_i^T, of norm ||a_i|| ||delta_i|| (Goodfellow 2015, "Efficient per-example
    gradient computations"), so S_i = sum_l ||a_i||^2 ||delta_i||^2 after an ordinary backward
    pass (the deltas do not depend on the clipping). u_i = S_i / C^2 is formed at 3f bits (the
    first layer's ||x_i||^2 / C^2 comes shared from the owner, :func:`row_norm_ratios`;
    hidden ||a_i||^2 / C^2 are rounded up), :func:`clip_factor` gives phi_i, and every
    layer's gradient is A^T (phi o Delta), one product scaling all deltas at once. Extra
    rounds over the MLP step (n = 2): 1 + 1 + 1 + 19 + 1.
    """
    f = ctx.fxp.frac_bits
    ws = model.weights
    y_b = data.Y[rows]
    acts: list[torch.Tensor] = []
    derivs: list[torch.Tensor] = []
    h = _masked_product(ctx, data, rows, ws[0], transpose=False)
    for w in ws[1:]:
        guard.record(h, _bits(ctx, ACTIVATION_BITS))
        a, bit = relu(ctx, h)
        acts.append(a)
        derivs.append(bit)
        h = matmul(ctx, a, w)
    guard.record(h, _bits(ctx, LOGIT_BITS))
    p = softmax_rows(ctx, h)
    guard.record_truncated(p, ctx.fxp.frac_bits)
    deltas: list[torch.Tensor] = [torch.empty(0)] * len(ws)
    delta = p - y_b
    deltas[-1] = delta
    for layer in range(len(ws) - 1, 0, -1):
        back = matmul(ctx, delta, ws[layer].T.contiguous())
        guard.record_truncated(back, f)
        delta = mul(ctx, back, derivs[layer - 1], scaled=False)
        deltas[layer - 1] = delta
    # Squares of every activation and delta in one product (2f bits), summed per row.
    both = torch.cat([*acts, *deltas], 1)
    sq = mul(ctx, both, both, scaled=False)
    widths = [t.shape[1] for t in (*acts, *deltas)]
    sums = [part.sum(1, keepdim=True) for part in torch.split(sq, widths, 1)]
    act_sq, delta_sq = sums[: len(acts)], sums[len(acts):]
    # ||a||^2 / C^2 at f bits, rounded up: truncate, times ceil(2^f / C^2), truncate, + 2 ulps.
    # Each truncation drops < 1 ulp: the slack makes every term an over-estimate.
    inv_c2 = math.ceil(2.0**f / clip**2)
    slack = math.ceil(1 / clip**2) + 2
    hidden = [add_public(ctx, truncate(ctx, truncate(ctx, s) * inv_c2), slack) for s in act_sq]
    u_3f = mul(ctx, torch.stack([ratio, *hidden]), torch.stack(delta_sq), scaled=False).sum(0)
    guard.record_wide(u_3f)  # |u| < 2^13: the factor's comparison and truncation domain
    phi = clip_factor(ctx, u_3f)
    scaled = mul(ctx, torch.cat(deltas, 1), phi.expand(-1, sum(t.shape[1] for t in deltas)))
    parts = torch.split(scaled, [t.shape[1] for t in deltas], 1)
    grads = [_masked_product(ctx, data, rows, parts[0].contiguous(), transpose=True,
                             scaled=False)]
    for layer in range(1, len(ws)):
        grads.append(matmul(ctx, acts[layer - 1].T.contiguous(), parts[layer].contiguous(),
                            scaled=False))
    return grads
