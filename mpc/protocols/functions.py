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
* :func:`row_max`: exactly the largest value of each row. Bitwise comparisons and up to 16
  columns: all pairs at once, one comparison of the K(K-1)/2 differences, one of each
  element's wins with K - 1 (the one-hot first maximum), one product: 2 comparison round sets
  + 1 round for any K. FSS comparisons or wider rows: a tournament, one comparison round set
  per level, ceil(log2 K) levels.
* :func:`softmax_rows`: subtract the row max, exp, then 1/s of the row sum in [1, K] from the
  finer spline alone, and one product. With FSS comparisons (n = 2): 4 + 1 + 1 + 1 = 7
  rounds for K = 10 (bitwise: 9 + 4 + 4 + 1 = 18); n > 2 adds one round, the result's truncation
  (exp's is fused into the 1/s comparison's opening, 1/s's into the product's, and logits
  given at 2f bits are truncated inside the row max's openings).
"""

from __future__ import annotations

import functools

import torch

from mpc.protocols.arith import add_public, mul, truncate, truncate_then_mul
from mpc.protocols.compare import (
    PiecewiseLinear,
    compare_thresholds,
    piecewise,
    threshold_products,
)
from mpc.protocols.context import PartyContext

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


# A threshold below every value compared against it: [x' >= -FAR] x' = x' for |x'| < FAR
# (logits are bounded by 2^LOGIT_BITS = 128 in training), so a comparison's products return
# the truncated input itself.
_FAR = 4096.0


# Rows of at most this many columns take the all-pairs row max (one comparison of the K(K-1)/2
# differences); wider rows the tournament, whose comparisons grow linearly with K.
ALL_PAIRS_MAX_COLUMNS = 16


def row_max(ctx: PartyContext, x: torch.Tensor, *, input_bits: int = 0) -> torch.Tensor:
    """Shares of the maximum of each row of a (B, K) tensor, exactly one of the row's values.

    Bitwise comparisons and K <= ``ALL_PAIRS_MAX_COLUMNS``: two comparison round sets and one
    product whatever K, against ceil(log2 K) sets for the tournament (:func:`_tournament_max`).
    First every pair i < j at once, b_ij = [x_i >= x_j]; the number of pairs element i wins (i
    beats j < i when x_i > x_j, j > i when x_i >= x_j, so ties go to the lower index) is K - 1
    for exactly one element, the first maximum; a second comparison, [wins_i >= K - 1], gives
    that one-hot indicator (as integer 0/1 shares), and one Beaver product sum_i [ind_i] x_i
    returns the maximum exactly (CrypTen's "pairwise" argmax takes the same O(K^2) comparisons
    in constant rounds [CrypTen21]; its default, like SecureNN's max, is the tournament).
    Rounds: 4 + 4 + 1; the comparisons see the differences x_i - x_j (|.| < 2^14 in real terms,
    as the tournament's). Bytes: (K - 1) / 2 + 1 comparisons per element (K = 10: 5.5 against
    the tournament's ~1).

    FSS comparisons keep the tournament: their cost is per compared element (~2 KB of dealer
    keys and ~1.5 us of evaluation each), and all pairs compare K (K + 1) / 2 elements per row
    against the tournament's K - 1 (6.1 times as many for K = 10) to save one round
    (digits-softmax, 2 parties, loopback: 0.95 s/epoch with the tournament, 1.24-1.30 all
    pairs; 2.5 against 6.5 MB of dealer keys per step).

    ``input_bits``: x is at f + input_bits fractional bits (|x| < 2^12 in real terms) and is
    truncated at no extra round: 2 parties locally first; n > 2 by the exact truncations fused
    into the first comparison's opening (the sign of a floor is that of the difference) and
    into the product's (``truncate_then_mul``). The result is then the maximum of the
    truncated values (within 2 ulps in the tournament form)."""
    k = x.shape[1]
    if k > ALL_PAIRS_MAX_COLUMNS or ctx.comparison == "fss":
        return _tournament_max(ctx, x, input_bits=input_bits)
    # n > 2: exact truncations inside the openings, [floor(d / 2^b) >= 0] = [d >= 0]; 2 parties
    # truncate x locally first (no round), so that the pairs compare the same values.
    fused = bool(input_bits) and not ctx.truncate_locally
    if input_bits and not fused:
        x = truncate(ctx, x, input_bits)
    if k == 1:
        return truncate(ctx, x[:, 0], input_bits) if fused else x[:, 0]
    first, second = _pairs(k)
    ge = compare_thresholds(ctx, x[:, first] - x[:, second], [0.0], with_products=False,
                            truncate_bits=input_bits if fused else 0)[0][0]
    wins = torch.zeros_like(x)
    wins.index_add_(1, first, ge)  # i < j beats j when x_i >= x_j
    wins.index_add_(1, second, -ge)  # j beats i < j otherwise: j - (pairs i < j it lost)
    wins = add_public(ctx, wins, _earlier(k))
    f = ctx.fxp.frac_bits
    top = compare_thresholds(ctx, wins << f, [k - 1.5], with_products=False)[0][0]
    if fused:  # the product's round also truncates x (the maximum of the truncated values)
        return truncate_then_mul(ctx, x, input_bits, top)[0].sum(1)
    return mul(ctx, top, x, scaled=False).sum(1)


@functools.lru_cache(maxsize=32)
def _pairs(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Column indices (i, j) of every pair i < j of k columns."""
    first, second = torch.triu_indices(k, k, 1)
    return first.contiguous(), second.contiguous()


@functools.lru_cache(maxsize=32)
def _earlier(k: int) -> torch.Tensor:
    """For each column j, the number of columns before it (the pairs i < j it may win)."""
    return torch.arange(k, dtype=torch.int64)


def _tournament_max(ctx: PartyContext, x: torch.Tensor, *, input_bits: int = 0) -> torch.Tensor:
    """The row max by a tournament: one comparison round set per level (max(a, b) =
    b + [a >= b] (a - b), the product from the same round).

    ``input_bits``: the first level's comparison truncates x in its opening (no extra round for
    n > 2): it takes a - b and b (and an odd last column) with the thresholds 0 and -4096,
    whose products are [a - b >= 0] (a - b)' and b' itself. The result is then within 2 ulps
    of the maximum of the truncated values (the difference is truncated apart from b)."""
    if input_bits:
        a, b, rest = _halves(x)
        half = a.shape[1]
        _, prod = threshold_products(ctx, torch.cat([a - b, b, rest], dim=1), [0.0, -_FAR],
                                     truncate_bits=input_bits)
        x = torch.cat([prod[1][:, half : 2 * half] + prod[0][:, :half], prod[1][:, 2 * half :]],
                      dim=1)
    while x.shape[1] > 1:
        a, b, rest = _halves(x)
        _, prod = threshold_products(ctx, a - b, [0.0])
        x = torch.cat([b + prod[0], rest], dim=1)  # b + [a >= b] (a - b) = max(a, b)
    return x[:, 0]


def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A tournament level's pairs: the first and second halves of the columns, and the odd
    last column (or none)."""
    half = x.shape[1] // 2
    return x[:, :half], x[:, half : 2 * half], x[:, 2 * half :]


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
