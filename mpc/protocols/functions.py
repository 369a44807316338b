"""Non-linear functions on shares for training: sigmoid, exp, reciprocal, max, softmax.

Max absolute errors below are measured against float64 torch on the stated domains (tests in
``tests/protocols/test_functions.py`` check them):

* :func:`sigmoid`: piecewise-linear with 16 knots on [-8, 8] (cubic spacing, chords shifted by
  half their error), constant 0 / 1 outside. Max abs error 3.4e-3 on the whole line for
  |x| < 2^14. 4 rounds (+1 if n > 2, or none when fused with a pending truncation)
  [SecureML17 uses 3 pieces; we use 17 in 4 rounds].
* :func:`exp`: (1 + x/2^8)^(2^8) by 8 squarings [CrypTen21]. For x in [-16, 0]: max abs error
  6e-3 (measured up to 4.8e-3 over 12 x 8001 points, 5.6e-3 over 10^6; near x = -0.25;
  fixed-point rounding of x / 2^8 dominates). 8 rounds (n = 2), 9 if n > 2 (every squaring
  shares its round with the truncation before it).
* :func:`reciprocal`: Newton y <- y (2 - s y) from y0 = 1/hi for s in [1, hi]; 7 iterations give
  relative error < 1e-4 for hi = 10. 2 rounds per iteration (+1 if n > 2).
* :func:`softmax_rows`: subtract the row max (tournament of comparisons, 4 rounds per level,
  ceil(log2 K) levels), exp, then reciprocal of the row sum in [1, K].
"""

from __future__ import annotations

import math

import torch

from mpc.protocols.arith import add_public, mul, truncate, truncate_then_mul, truncate_then_square
from mpc.protocols.compare import PiecewiseLinear, compare_thresholds, piecewise
from mpc.protocols.context import PartyContext

__all__ = ["SIGMOID", "sigmoid", "exp", "reciprocal", "row_max", "softmax_rows"]


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


def exp(ctx: PartyContext, x: torch.Tensor, squarings: int = 8) -> torch.Tensor:
    """Shares of exp(x) as (1 + x / 2^k)^(2^k), intended for x <= 0 (after max subtraction).

    Domain: -2^k <= x <= 0 (-256 for k = 8); below, 1 + x / 2^k < 0 and the result grows again
    (non-monotone). ``training`` keeps softmax logits within +-128, checked each epoch
    (``mpc.protocols.rangecheck``), so x = logit - row max stays above -256.

    k squarings, each fused with the truncation before it (``truncate_then_square``): k rounds
    for 2 parties, k + 1 for more (the last truncation).
    """
    z = truncate_then_square(ctx, x, squarings, ctx.fxp.scale)  # (1 + x / 2^k)^2 at 2f bits
    for _ in range(squarings - 1):
        z = truncate_then_square(ctx, z, ctx.fxp.frac_bits)
    return truncate(ctx, z)


def reciprocal(
    ctx: PartyContext, s: torch.Tensor, hi: float, iterations: int | None = None
) -> torch.Tensor:
    """Shares of 1/s for s in [1, hi] by Newton's iteration from y0 = 1/hi: 2 rounds per
    iteration (each product shares its round with the truncation of its pending operand),
    +1 for the last truncation if n > 2."""
    if iterations is None:
        # error after k steps is e0^(2^k) with e0 <= 1 - 1/hi; aim for 1e-4
        e0 = 1 - 1 / hi
        iterations = max(1, math.ceil(math.log2(math.log(1e-4) / math.log(e0)))) if e0 > 0 else 1
    fxp = ctx.fxp
    f = fxp.frac_bits
    # y is kept pending: z = y * 2^f, truncated inside the next product's round.
    z = add_public(ctx, torch.zeros_like(s), int(fxp.encode(1 / hi)) << f)
    two = int(fxp.encode(2.0))
    for _ in range(iterations):
        sy, y = truncate_then_mul(ctx, z, f, s)  # s * y, and y itself
        z, _ = truncate_then_mul(ctx, -sy, f, y, offset=two)  # y * (2 - s y)
    return truncate(ctx, z)


def row_max(ctx: PartyContext, x: torch.Tensor) -> torch.Tensor:
    """Shares of the maximum of each row of a (B, K) tensor: 4 rounds per tournament level."""
    while x.shape[1] > 1:
        k = x.shape[1]
        half = k // 2
        a, b = x[:, :half], x[:, half : 2 * half]
        diff = a - b
        _, prod = compare_thresholds(ctx, diff, [0.0])
        if prod is None:  # compare_thresholds returns products by default
            raise ValueError("row_max: comparison returned no products")
        winners = b + prod[0]  # b + [a >= b] (a - b) = max(a, b)
        x = torch.cat([winners, x[:, 2 * half :]], dim=1) if k % 2 else winners
    return x[:, 0]


def softmax_rows(ctx: PartyContext, x: torch.Tensor) -> torch.Tensor:
    """Shares of softmax over the last dimension of a (B, K) tensor of logits."""
    k = x.shape[1]
    shifted = x - row_max(ctx, x).unsqueeze(1)
    e = exp(ctx, shifted)
    total = e.sum(1, keepdim=True)
    inv = reciprocal(ctx, total, float(k))
    return mul(ctx, e, inv.expand_as(e))
