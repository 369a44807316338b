"""Comparison with public thresholds, ReLU, and piecewise-linear functions [SecureML17, CrypTen21].

Core: :func:`compare_thresholds` gives, for a shared x and K public thresholds t_k, arithmetic
shares of the bits b_k = [x >= t_k] and of the products b_k * x, in 4 rounds for any K:

1. open c = x + r (r a uniform dealer mask, so c is uniform)                            1 round
   For n > 2 an input still to be truncated (a product at 2f bits) needs no extra round: the
   truncation's own opening, with the dealer's bits of r >> f, is the masked value.
2. y_k = x - t_k = c_k - r with public c_k = c - t_k. For |y_k| < 2^30 the sign of y_k is bit 30
   of (c_k - r) mod 2^31 = c_k[30] xor r[30] xor borrow_k, borrow_k = [c_k mod 2^30 < r mod 2^30].
   The borrow compares a public value with the XOR-shared bits of r by a (generate,
   propagate) tree. Its first two levels (nibbles) are local, from the dealer's XOR shares
   of products of r bits; the 4 nibbles are combined in one round of multi-factor ANDs
   (``mpc.protocols.gf2``). Thresholds are multiples of 2^14 in the ring, so the low 14 bits of c_k
   are those of c for every k: their 16-bit (padded) tree runs once, beside the
   per-threshold trees over bits 14..29, and one more round folds it in           2 rounds
3. B2A and the product with x in one round: with a dealer bit z (XOR and arithmetic shares)
   and [z*r], open e = b xor z; then [b] = e + (1-2e)[z] and, as x = c - r,
   [b*x] = c[b] - e[r] - (1-2e)[z*r] -- all local after e is public                  1 round

Per element and threshold: 10 bits sent to each peer (+ 7 bits per element for the shared low
tree), plus 1 word per element for step 1; the dealer sends party 0 23 bits + 2 words per
element and threshold (+1 word with a fused truncation), and 121 bits of mask monomials per
element. Correct whenever |x - t_k| < 2^30 (2^14 in real terms at f = 16).

With ``ctx.comparison == "fss"``, :func:`compare_thresholds` (and so ReLU, the piecewise
functions, row max and the range check) runs ``mpc.protocols.fsscompare`` instead: the same
outputs in 1 round, from function-secret-sharing keys that cost the dealer ~2 KB per element.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mpc.core.bits import packed_words, slice_bits, unslice_bits
from mpc.core.fixedpoint import FixedPoint
from mpc.protocols import gf2
from mpc.protocols.arith import (
    TruncationMask,
    add_public,
    and_bits,
    open_bits,
    open_masked,
    truncate,
)
from mpc.protocols.context import PartyContext
from mpc.protocols.fsscompare import compare_thresholds_fss
from mpc.protocols.gf2 import NIBBLE

__all__ = ["COMPARE_BITS", "compare_thresholds", "greater_equal_bits", "threshold_products",
           "relu", "PiecewiseLinear", "piecewise"]

COMPARE_BITS = 30  # |x - t| < 2^COMPARE_BITS is required (2^14 in real terms at f = 16)
SHARED_LOW_BITS = 14  # thresholds are multiples of 2^SHARED_LOW_BITS in the ring (0.25 at f = 16)
_IDENTITY_PAD = 2  # pads the 14 shared low bits to 16 with (generate, propagate) = (0, 1)


def compare_thresholds(
    ctx: PartyContext,
    x: torch.Tensor,
    thresholds: Sequence[float],
    *,
    with_products: bool = True,
    truncate_bits: int = 0,
    exact_truncation: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shares of b_k = [x' >= t_k] (shape (K, *x.shape), integers 0/1) and of b_k * x'.

    x' = x / 2^truncate_bits (for an input still at f + truncate_bits fractional bits, e.g. a
    product). 4 rounds in all: for n > 2 (or with ``exact_truncation``, any n) the
    dealer-assisted truncation is fused with the masked opening (see
    :func:`_truncate_and_open`), so it costs no extra round; with n = 2 it is otherwise local
    (``protocols.truncate``). What is compared is bit 30 of (x' - t_k) mod 2^31 for any x':
    the sign of x' - t_k whenever |x' - t_k| < 2^30 (``mpc.protocols.rangecheck`` relies on this
    also outside that domain). Thresholds must be
    multiples of 2^(SHARED_LOW_BITS - f) (0.25 at f = 16): their low bits are then zero, so the
    borrow out of the low 14 bits is the same for every threshold and is computed once.

    With ``ctx.comparison == "fss"`` this dispatches to the function-secret-sharing backend
    (``mpc.protocols.fsscompare``): the same outputs in 1 round for any n, from DCF keys.
    """
    if ctx.comparison == "fss":
        return compare_thresholds_fss(
            ctx,
            x,
            thresholds,
            with_products=with_products,
            truncate_bits=truncate_bits,
            exact_truncation=exact_truncation,
        )
    pre = ctx.pre
    shape = tuple(x.shape)
    k = len(thresholds)
    ge, c, mask_terms = _compare_xor(ctx, x, thresholds, truncate_bits, exact_truncation)
    # B2A: with a dealer bit z (XOR and arithmetic shares), open e = b xor z; then
    # [b] = e + (1 - 2e)[z]; for a dealer-known v also [b v] = e [v] + (1 - 2e)[z v].
    z = pre.random_bits((k * packed_words(math.prod(shape)),))  # sliced, one row per t_k
    z_bits = functools.cache(functools.partial(_unslice, z, shape))  # the dealer's, once
    z_arith = pre.correlated("cmp/b2a", (k,) + shape, z_bits)
    zv = (
        [
            pre.correlated("cmp/zr", (k,) + shape, functools.partial(_times_bits, z_bits, v))
            for v, _ in mask_terms
        ]
        if with_products
        else []
    )
    if ctx.dry:
        out = torch.zeros((k,) + shape, dtype=torch.int64)
        return out, (out if with_products else None)
    (e,) = open_bits(ctx, "cmp/b2a", [ge ^ z])
    e64 = _unslice(e, shape)
    sign = 1 - 2 * e64
    bits_share = add_public(ctx, sign * z_arith, e64)
    if not with_products:
        return bits_share, None
    # x' = c - R with R = sum of the mask terms (coefficient None = 1): b x' = c [b] - [b R].
    products = c.unsqueeze(0) * bits_share
    for (v, coeff), z_v in zip(mask_terms, zv, strict=True):
        b_v = e64 * v.unsqueeze(0) + sign * z_v
        products -= b_v if coeff is None else coeff.unsqueeze(0) * b_v
    return bits_share, products


def greater_equal_bits(
    ctx: PartyContext, x: torch.Tensor, thresholds: Sequence[float], *, truncate_bits: int = 0
) -> torch.Tensor:
    """Sliced XOR shares of b_k = [x' >= t_k] (K rows of ``packed_words(x.numel())`` words,
    ``mpc.core.bits``), for callers that go on in the XOR domain: :func:`compare_thresholds`
    without its last (B2A) round, 3 rounds; bitwise comparisons only."""
    if ctx.comparison == "fss":
        raise ValueError("greater_equal_bits: the FSS backend returns arithmetic shares only")
    ge, _, _ = _compare_xor(ctx, x, thresholds, truncate_bits, False)
    return ge


def _compare_xor(
    ctx: PartyContext, x: torch.Tensor, thresholds: Sequence[float], truncate_bits: int,
    exact_truncation: bool,
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor | None]]]:
    """Steps 1-2 of the module doc, 3 rounds: the sliced XOR shares of [x' >= t_k], the
    opened c and the mask terms R (x' = c - R, as (share, coefficient) pairs)."""
    shape = tuple(x.shape)
    k = len(thresholds)
    t = _encoded_thresholds(ctx.fxp, tuple(thresholds)).reshape((k,) + (1,) * len(shape))
    if truncate_bits and (exact_truncation or not ctx.truncate_locally):
        c, r_bits, mask_terms = _truncate_and_open(ctx, x, truncate_bits)
    else:
        if truncate_bits:
            x = truncate(ctx, x, truncate_bits)  # local for n = 2
        r = ctx.pre.random(shape)
        r_bits = _mask_material(ctx, shape, lambda: r)
        c = torch.zeros_like(x) if ctx.dry else open_masked(ctx, "cmp", [x + r])[0]
        mask_terms = [(r, None)]
    ge = _dry_tree(ctx, shape, k) if ctx.dry else _greater_equal(ctx, c, *r_bits, t)
    return ge, c, mask_terms


@functools.lru_cache(maxsize=256)
def _encoded_thresholds(fxp: FixedPoint, thresholds: tuple[float, ...]) -> torch.Tensor:
    t = fxp.encode(list(thresholds), what="thresholds")
    if bool((t % (1 << SHARED_LOW_BITS) != 0).any()):
        raise ValueError(
            "compare_thresholds: thresholds must be multiples of "
            f"2^{SHARED_LOW_BITS - fxp.frac_bits}"
        )
    return t


def _unslice(words: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Sliced bits of K rows (words of shape (K * W,)) -> int64 0/1 of shape (K, *shape)."""
    n = math.prod(shape)
    w = packed_words(n)
    return unslice_bits(words.reshape(-1, w), n).reshape((-1,) + shape)


def _times_bits(z_bits: Callable[[], torch.Tensor], v: torch.Tensor) -> torch.Tensor:
    """The dealer's z * v (z_bits(): the bits z of K rows as 0/1 of shape (K, *v.shape))."""
    return z_bits() * v.unsqueeze(0)


def _truncate_and_open(
    ctx: PartyContext, x: torch.Tensor, bits: int
) -> tuple[
    torch.Tensor, tuple[torch.Tensor, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor | None]]
]:
    """n > 2: truncate by ``bits`` and open the comparison's masked value in one round.

    The truncation (``protocols.truncate``) opens c = x + 2^62 + r and yields
    x' = P - R with public P = (c >> bits) - 2^(62 - bits) and R = (r >> bits) - w 2^(64 - bits)
    r_63, w = [c < 2^63] public. Modulo 2^31 (all the comparison looks at) R is r >> bits, so
    with the dealer's bits of r >> bits as the comparison mask, P is already the comparison's
    masked value: no second opening. Returns P, the mask bits and R as (share, coefficient)
    terms for the products.
    """
    if bits + COMPARE_BITS + 1 > 64:
        raise ValueError(f"compare_thresholds: cannot fuse a truncation by {bits} bits")
    shape = tuple(x.shape)
    mask = TruncationMask.draw(ctx, shape, bits)
    r_bits = _mask_material(ctx, shape, lambda: mask.high)
    if ctx.dry:
        zero = torch.zeros_like(x)
        return zero, r_bits, [(mask.high, None), (mask.msb, zero)]
    (c,) = open_masked(ctx, "trunc+cmp", [mask.masked(ctx, x)])
    gate, public = mask.opened(c)
    wrap_coeff = -gate.to(torch.int64) * (1 << (64 - bits))
    return public, r_bits, [(mask.high, None), (mask.msb, wrap_coeff)]


def _mask_material(
    ctx: PartyContext, shape: tuple[int, ...], mask: Callable[[], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shares of the mask's nibble monomials (low 14 bits padded by 2 | bits 14..29) and of
    its bit 30, sliced; ``mask`` gives the dealer the full mask."""
    w = packed_words(math.prod(shape))
    tree = SHARED_LOW_BITS + _IDENTITY_PAD  # 16 tree positions per part

    @functools.cache
    def sliced() -> torch.Tensor:
        """The dealer's one slicing: part 0 (words 0..w-1) the low 14 bits padded by 2, part 1
        (words w..2w-1) bits 14..30; positions 0..15 are the trees', 16 of part 1 bit 30."""
        flat = mask().reshape(1, -1)
        both = torch.cat([flat << _IDENTITY_PAD, flat >> SHARED_LOW_BITS])
        return slice_bits(both, 0, tree + 1)

    mono = ctx.pre.correlated_bits("cmp/rmono", ((1 << NIBBLE) - 1, NIBBLE, 2 * w),
                                   lambda: gf2.mask_monomials(sliced()[:tree]))
    msb = ctx.pre.correlated_bits("cmp/rmsb", (w,), lambda: sliced()[tree, w:])
    return mono, msb


def _greater_equal(
    ctx: PartyContext, c: torch.Tensor, mono: torch.Tensor, r_msb: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """Sliced XOR shares of [c - t_k - r >= 0] (K rows) for |c - t_k - r| < 2^30: nibbles
    locally (``mpc.protocols.gf2``), then one round to combine the 4 nibbles and one for the carry
    from
    the shared low part: 2 rounds."""
    low = SHARED_LOW_BITS
    k = t.shape[0]
    w = r_msb.shape[0]
    flat = c.reshape(1, -1)
    c_k = flat - t.reshape(k, 1)  # public; equal to c in the low 14 bits
    packed = gf2.mask_tables(ctx.pid, mono).numpy()  # (2, 16, 4, 2w): low mask | high mask
    lead = packed.shape[:3]
    spread = np.empty(lead + (k + 1, w), dtype=np.int64)  # low mask | high mask K times
    spread[..., 0, :] = packed[..., :w]
    spread[..., 1:, :] = packed[..., None, w:]
    tables = torch.from_numpy(spread.reshape(lead + ((k + 1) * w,)))
    # One slicing for all rows: row 0 holds the low 14 bits (padded by 2) at bits 14..29, so
    # that bits 14..30 of row 0 | c_k give the 16 tree positions and, for c_k, the sign bit.
    src = torch.cat([flat << (low + _IDENTITY_PAD), c_k])
    bits = slice_bits(src, low, COMPARE_BITS - low + 1)  # (17, (K + 1) w)
    g, p = gf2.nibble_compare(bits[:-1], tables)  # (4, (K + 1) w)
    g_root, p_root = gf2.combine_nibbles(ctx, g, p, "cmp")
    g_lo, g_hi, p_hi = g_root[:w], g_root[w:], p_root[w:]
    (carry,) = and_bits(ctx, p_hi, [g_lo.expand(k, w).reshape(-1)], "cmp")
    msb = r_msb.expand(k, w).reshape(-1) ^ g_hi ^ carry
    a_msb = bits[-1, w:]
    return ~(msb ^ a_msb) if ctx.pid == 0 else msb


def _dry_tree(ctx: PartyContext, shape: tuple[int, ...], k: int) -> torch.Tensor:
    """The dealer's dry run of :func:`_greater_equal`: the same AND-triple requests in the
    same order and shapes, without the parties' local computation."""
    w = packed_words(math.prod(shape))
    zero = torch.zeros((NIBBLE, (k + 1) * w), dtype=torch.int64)
    gf2.combine_nibbles(ctx, zero, zero, "cmp")
    zero = torch.zeros((k * w,), dtype=torch.int64)
    and_bits(ctx, zero, [zero], "cmp")
    return zero


def threshold_products(
    ctx: PartyContext, x: torch.Tensor, thresholds: Sequence[float], *,
    truncate_bits: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`compare_thresholds` with its products: (bits, products [x >= t_k] x)."""
    bits, products = compare_thresholds(ctx, x, thresholds, truncate_bits=truncate_bits)
    if products is None:  # compare_thresholds returns them unless with_products=False
        raise ValueError("compare_thresholds returned no products")
    return bits, products


def relu(
    ctx: PartyContext, x: torch.Tensor, *, input_bits: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shares of max(x', 0) and of the derivative bit [x' >= 0]: 4 rounds (see module doc; 1
    with the FSS backend). ``input_bits``: x is at f + input_bits fractional bits (a product)
    and x' = x / 2^input_bits is truncated inside the comparison's opening (no extra round
    for n > 2; local for 2 parties)."""
    bits, products = threshold_products(ctx, x, [0.0], truncate_bits=input_bits)
    return products[0], bits[0]


@dataclass(frozen=True)
class PiecewiseLinear:
    """f(x) = sum_k [x >= t_k] * (da_k * x + db_k): 0 below t_1, slope and offset jump at t_k."""

    knots: tuple[float, ...]
    slope_steps: tuple[float, ...]
    offset_steps: tuple[float, ...]

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """Plaintext evaluation (the reference for tests)."""
        out = torch.zeros_like(x, dtype=torch.float64)
        for t, da, db in zip(self.knots, self.slope_steps, self.offset_steps, strict=True):
            out = out + (x >= t).to(torch.float64) * (da * x + db)
        return out

    @classmethod
    def fit(cls, fn, knots: Sequence[float], left: float, right: float) -> PiecewiseLinear:  # noqa: ANN001
        """Chord interpolation of ``fn`` between knots, shifted by half of each chord's error.

        Constant ``left`` below the first knot and ``right`` above the last.
        """
        kt = torch.tensor(list(knots), dtype=torch.float64)
        slopes = [0.0]
        offsets = [left]
        for lo, hi in zip(kt[:-1].tolist(), kt[1:].tolist(), strict=True):
            grid = torch.linspace(lo, hi, 257, dtype=torch.float64)
            ylo, yhi = float(fn(torch.tensor(lo))), float(fn(torch.tensor(hi)))
            slope = (yhi - ylo) / (hi - lo)
            chord = ylo + slope * (grid - lo)
            err = fn(grid) - chord
            shift = (float(err.max()) + float(err.min())) / 2
            slopes.append(slope)
            offsets.append(ylo - slope * lo + shift)
        slopes.append(0.0)
        offsets.append(right)
        return cls(
            tuple(kt.tolist()),
            tuple(b - a for a, b in zip(slopes[:-1], slopes[1:], strict=True)),
            tuple(b - a for a, b in zip(offsets[:-1], offsets[1:], strict=True)),
        )


@functools.lru_cache(maxsize=64)
def _coefficients(
    fn: PiecewiseLinear, scale: float, f: int, extra_bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ring slopes (f + extra bits) and offsets (2f + extra bits) of scale * fn's steps.

    The cumulative slope and offset of each segment are rounded, then differenced: rounding
    the steps one by one would leave a slope of up to K/2 ulps beyond the last knot (growing
    with |x|, e.g. ~1 at |x| = 2^13 for the sigmoid); this way the last segment's slope is
    exactly 0. A segment's offset also absorbs its slope's rounding at the segment's middle,
    so that the rounding error grows with the distance from the middle (at most half an ulp
    of slope times half the segment), not with |x| (e.g. 40 x half an ulp for 1/s at s = 10,
    a relative error of 3e-3).
    """
    slopes = [scale * v for v in itertools.accumulate(fn.slope_steps)]
    offsets = [scale * v for v in itertools.accumulate(fn.offset_steps)]
    knots = fn.knots
    mids = [(lo + hi) / 2 for lo, hi in zip(knots[:-1], knots[1:], strict=True)] + [knots[-1]]
    ring_slopes = [round(a * 2.0 ** (f + extra_bits)) for a in slopes]
    ring_offsets = [
        round(b * 2.0 ** (2 * f + extra_bits) + (a * 2.0 ** (f + extra_bits) - ra) * m * 2.0**f)
        for a, b, ra, m in zip(slopes, offsets, ring_slopes, mids, strict=True)
    ]

    def steps(cumulative: list[int]) -> torch.Tensor:
        return torch.diff(torch.tensor(cumulative, dtype=torch.int64),
                          prepend=torch.zeros(1, dtype=torch.int64))

    return steps(ring_slopes), steps(ring_offsets)


def piecewise(
    ctx: PartyContext,
    x: torch.Tensor,
    fn: PiecewiseLinear,
    *,
    scale: float = 1.0,
    truncated: bool = True,
    extra_bits: int = 0,
    input_bits: int = 0,
) -> torch.Tensor:
    """Shares of scale * f(x) for a piecewise-linear f: 4 rounds (+1 truncation round if n > 2;
    1 + 0 / 1 with the FSS backend).

    ``input_bits``: x is at f + input_bits fractional bits and is truncated first, at no extra
    round (see :func:`compare_thresholds`).

    ``truncated=False`` returns the result at 2f + ``extra_bits`` fractional bits and saves the
    truncation, for callers that fold it into a later one (``extra_bits`` keeps a small
    ``scale`` from costing precision).
    """
    bits, products = threshold_products(ctx, x, fn.knots, truncate_bits=input_bits)
    fxp = ctx.fxp
    k = len(fn.knots)
    view = (k,) + (1,) * x.dim()
    if truncated and extra_bits:
        raise ValueError("piecewise: extra_bits needs truncated=False")
    if ctx.dry:  # the dealer's dry run: only the truncation's material is still to come
        acc = torch.zeros(tuple(x.shape), dtype=torch.int64)
    else:
        da, db = _coefficients(fn, scale, fxp.frac_bits, extra_bits)
        acc = (da.reshape(view) * products + db.reshape(view) * bits).sum(0)
    return truncate(ctx, acc) if truncated else acc
