"""Non-linear functions on shares for training: sigmoid, exp, reciprocal, max, softmax.

Max absolute errors below are measured against float64 torch on the stated domains (tests in
``tests/protocols/test_functions.py`` check them). Every comparison goes through
``compare.compare_thresholds``: one "comparison round set" is 1 round with the FSS backend
(``ctx.comparison == "fss"``, ``fsscompare``) and 4 with the bitwise one, for any number of
thresholds:

* :func:`sigmoid`: piecewise-linear with 16 knots on [-8, 8] (cubic spacing, chords shifted by
  half their error), constant 0 / 1 outside. Max abs error 3.4e-3 on the whole line for
  |x| < 2^14. One comparison round set (+1 if n > 2, or none when fused with a pending
  truncation) [SecureML17 uses 3 pieces; we use 17 in the same rounds].
* :func:`exp`: piecewise-linear with 19 knots on [-16, 0] (spacing 1/8 near 0, growing as the
  curvature e^x falls; chords shifted by half their error), 0 below -16 (e^-16 < 1.2e-7) and
  exactly 1 at 0 (the row maximum after subtraction). Max abs error 1.0e-3 on x <= 0. One
  comparison round set: 1 round with FSS comparisons, 4 bitwise (+1 truncation if n > 2).
* :func:`reciprocal`: an initial piecewise-linear 1/s on [3/4, hi] (knots at ratio ~1.25,
  relative error < 4e-3), then Newton y <- y (2 - s y): one iteration squares the relative
  error (< 2e-5). Comparison rounds + 2 per iteration. With ``iterations=0`` a finer spline
  alone (relative error < 1.2e-3 with rounding): one comparison round set.
* :func:`row_max` (``rowmax.py``): exactly the largest value of each row. Bitwise comparisons
  and up to 16 columns: all pairs at once, one comparison of the K(K-1)/2 differences left in
  the XOR domain, the AND of each element's K - 1 wins (the one-hot first maximum), B2A and
  the product in one round: 3 + 1 + 1 = 5 rounds for K <= 11. FSS comparisons or wider rows:
  a tournament, one comparison round set per level, ceil(log2 K) levels.
* :func:`softmax_rows`: subtract the row max, exp, then 1/s of the row sum in [1, K] from the
  finer spline alone, and one product. With FSS comparisons (n = 2): 4 + 1 + 1 + 1 = 7
  rounds for K = 10 (bitwise: 5 + 4 + 4 + 1 = 14); n > 2 adds one round, the result's truncation
  (exp's is fused into the 1/s comparison's opening, 1/s's into the product's, and logits
  given at 2f bits are truncated inside the row max's openings).
"""

from __future__ import annotations

import functools

import torch

from mpc.protocols.arith import truncate, truncate_then_mul
from mpc.protocols.compare import PiecewiseLinear, piecewise
from mpc.protocols.context import PartyContext
from mpc.protocols.rowmax import row_max

__all__ = ["SIGMOID", "EXP", "sigmoid", "exp", "reciprocal", "row_max", "softmax_rows"]


def _sigmoid_knots(count: int = 16, span: float = 8.0) -> list[float]:
    # Denser near |x| ~ 1-3 where the sigmoid bends most: u -> 0.6 u + 0.4 u^3, rounded to
    # multiples of 1/4 as compare_thresholds requires (the error stays 3.4e-3).
    us = [-1 + 2 * i / (count - 1) for i in range(count)]
    return sorted({round(4 * span * (0.6 * u + 0.4 * u**3)) / 4 for u in us})


SIGMOID = PiecewiseLinear.fit(torch.sigmoid, _sigmoid_knots(), 0.0, 1.0)


def sigmoid(
    ctx: PartyContext,
    x: torch.Tensor,
    *,
    scale: float = 1.0,
    truncated: bool = True,
    extra_bits: int = 0,
    input_bits: int = 0,
) -> torch.Tensor:
    """Shares of scale * sigmoid(x): 17-piece linear approximation (max abs error 3.4e-3).

    ``truncated=False`` leaves the result at 2f fractional bits; ``input_bits`` takes x at
    f + input_bits bits and truncates it within the comparison's rounds (``compare.piecewise``).
    """
    return piecewise(
        ctx,
        x,
        SIGMOID,
        scale=scale,
        truncated=truncated,
        extra_bits=extra_bits,
        input_bits=input_bits,
    )


# exp and 1/s are evaluated on y = 4 x (an exact public multiplication): knots at multiples of
# 1/4 in y (what the bitwise comparison needs) are multiples of 1/16 in x.
INPUT_SCALE = 4
# Knots of exp(y / 4) on y in [-64, 0]: greedy from 0 leftwards, the widest multiple of 1/4
# whose shifted chord stays within 1e-3 (measured max abs error 1.0e-3 on x <= 0).
EXP_KNOTS = (-64.0, -25.0, -18.0, -14.25, -11.75, -10.0, -8.5, -7.25, -6.25, -5.25, -4.5,
             -3.75, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0)
EXP = PiecewiseLinear.fit(lambda y: torch.exp(y / INPUT_SCALE), EXP_KNOTS, 0.0, 1.0)


def exp(ctx: PartyContext, x: torch.Tensor) -> torch.Tensor:
    """Shares of exp(x) for x <= 0 (after a max subtraction): 19-piece linear approximation in
    4 x, max abs error 1.0e-3, exactly 1 at x = 0; 0 below -16; 1 for x > 0 (out of domain).
    Needs x >= -2^12 (the comparison's domain for 4 x).

    One :func:`~mpc.protocols.compare.piecewise` evaluation: 1 round with FSS comparisons
    (n = 2), 4 with the bitwise comparison, +1 truncation round if n > 2.
    """
    return piecewise(ctx, x * INPUT_SCALE, EXP)


def _chord_error(lo: float, hi: float) -> float:
    """Largest relative error of the shifted chord of 1/s on [lo, hi] (s in units of 1)."""
    grid = torch.linspace(lo, hi, 129, dtype=torch.float64)
    err = (1 / grid - (1 / lo + (1 / hi - 1 / lo) / (hi - lo) * (grid - lo))) * grid
    return float(err.max() - err.min()) / 2


# Chord-error budget of the initial 1/s spline before Newton (each iteration squares the
# relative error), and of the finer spline used alone (``iterations=0``, e.g. softmax's 1/s:
# 37 knots for s <= 10, measured max relative error 9.9e-4 on [1, 10]).
NEWTON_START_ERROR = 4e-3
SPLINE_ONLY_ERROR = 9.5e-4


@functools.lru_cache(maxsize=32)
def _reciprocal_spline(hi: float, error: float = NEWTON_START_ERROR) -> PiecewiseLinear:
    """1/(y / 4) for y = 4 s, s in [3/4, hi]: knots greedy from 3/4, each piece the widest
    multiple of 1/16 (in s) whose shifted chord has relative error < ``error``; 0 below 3/4,
    1/(last knot) above it."""
    q = 1 / INPUT_SCALE**2
    knots = [0.75]
    while knots[-1] < hi:
        lo, width = knots[-1], q
        while _chord_error(lo, lo + width + q) < error and lo + width < hi:
            width += q
        knots.append(lo + width)
    return PiecewiseLinear.fit(
        lambda y: INPUT_SCALE / y, [INPUT_SCALE * t for t in knots], 0.0, 1 / knots[-1]
    )


def reciprocal(
    ctx: PartyContext,
    s: torch.Tensor,
    hi: float,
    iterations: int | None = None,
    *,
    truncated: bool = True,
    input_bits: int = 0,
) -> torch.Tensor:
    """Shares of 1/s for s in [1, hi]: y0 from a piecewise-linear 1/s (relative error < 4e-3,
    one comparison round set), then Newton y <- y (2 - s y), 2 rounds per iteration (each
    product shares its round with the truncation of its pending operand), +1 for the last
    truncation if n > 2. One iteration (the default) leaves a relative error < 2e-5.
    ``iterations=0``: a finer spline alone (relative error < 1e-3, plus the fixed-point
    rounding: < 1.2e-3 measured on [1, 10]; 37 knots for hi = 10, 64 for 100), one
    comparison round set in all: 1 round with FSS comparisons, 4 bitwise.

    ``truncated=False`` returns 1/s at 2f fractional bits, for a caller that truncates it
    inside its next product (``truncate_then_mul``). ``input_bits`` (``iterations=0`` only):
    s is at f + input_bits fractional bits and is truncated inside the comparison's opening
    (exact; no extra round for n > 2)."""
    if hi < 1:
        raise ValueError(f"reciprocal: hi = {hi} must be >= 1")
    if iterations is None:
        iterations = 1
    if input_bits and iterations:
        raise ValueError("reciprocal: input_bits needs iterations=0 (Newton uses s itself)")
    fxp = ctx.fxp
    f = fxp.frac_bits
    two = int(fxp.encode(2.0))
    error = NEWTON_START_ERROR if iterations else SPLINE_ONLY_ERROR
    # y is kept pending: z = y * 2^f, truncated inside the next product's round.
    z = piecewise(ctx, s * INPUT_SCALE, _reciprocal_spline(float(hi), error), truncated=False,
                  input_bits=input_bits)
    for _ in range(iterations):
        sy, y = truncate_then_mul(ctx, z, f, s)  # s * y, and y itself
        z, _ = truncate_then_mul(ctx, -sy, f, y, offset=two)  # y * (2 - s y)
    return truncate(ctx, z) if truncated else z


def softmax_rows(ctx: PartyContext, x: torch.Tensor, *, input_bits: int = 0) -> torch.Tensor:
    """Shares of softmax over the last dimension of a (B, K) tensor of logits: row max, exp
    (1.0e-3 abs), the row sum's reciprocal from a spline alone (relative error < 1e-3, one
    comparison round set), one product. n > 2: exp's truncation happens inside the 1/s
    comparison's opening (exp stays at 2f bits for the product) and 1/s's inside the product's
    opening, so the only truncation round is the result's.

    ``input_bits``: the logits are at f + input_bits fractional bits (a product not yet
    truncated): the row max truncates them inside its first comparison and exp inside its own
    (no extra round for n > 2; the max is within 2 ulps of the truncated logits' maximum, and
    exp is 1 above 0)."""
    k = x.shape[1]
    f = ctx.fxp.frac_bits
    m = row_max(ctx, x, input_bits=input_bits)
    shifted = x - (m * (1 << input_bits)).unsqueeze(1)  # at f + input_bits bits
    pending = 0 if ctx.truncate_locally else f  # n = 2 truncates locally, at no round
    e = piecewise(ctx, shifted * INPUT_SCALE, EXP, truncated=not pending,
                  input_bits=input_bits)  # at f + pending bits
    total = e.sum(1, keepdim=True)
    inv_2f = reciprocal(ctx, total, float(k), 0, truncated=False, input_bits=pending)
    p, _ = truncate_then_mul(ctx, inv_2f, f, e)  # (B, 1) x (B, K): 2f + pending bits
    return truncate(ctx, p, f + pending)
