"""Comparison with public thresholds, ReLU, and piecewise-linear functions [SecureML17, CrypTen21].

Core: :func:`compare_thresholds` gives, for a shared x and K public thresholds t_k, arithmetic
shares of the bits b_k = [x >= t_k] and of the products b_k * x, in 7 rounds for any K:

1. open c = x + r and f = x - m (r, m uniform dealer masks; c and f are uniform)       1 round
2. y_k = x - t_k = c_k - r with public c_k = c - t_k. For |y_k| < 2^32 the sign of y_k is bit 32
   of (c_k - r) mod 2^33 = c_k[32] xor r[32] xor borrow_k, borrow_k = [c_k mod 2^32 < r mod 2^32].
   The borrow is a comparison of a public value with the XOR-shared bits of r: a log-depth
   (generate, propagate) tree, one round of 2 bitwise ANDs per level                   5 rounds
3. B2A and the product with x in one round: with a dealer bit z (XOR and arithmetic shares)
   and [z*m], open e = b xor z; then [b] = e + (1-2e)[z] and
   [b*x] = e[x] + (1-2e)(f[z] + [z*m]) -- all local after e is public                 1 round

Per element and threshold: ~ 3 * 32 + 1 bits sent to each peer, plus 2 words per element for
step 1; the dealer sends party 0 ~ 64 bits + 2 words per element and threshold.
Correct whenever |x - t_k| < 2^32 (2^16 in real terms at f = 16).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mpc.bits import to_bits
from mpc.context import PartyContext
from mpc.protocols import add_public, and_bits, open_bits, open_masked, truncate

__all__ = ["COMPARE_BITS", "compare_thresholds", "relu", "PiecewiseLinear", "piecewise"]

COMPARE_BITS = 32  # |x - t| < 2^COMPARE_BITS is required


def _borrow_tree(ctx: PartyContext, g: torch.Tensor, p: torch.Tensor, op: str) -> torch.Tensor:
    """XOR shares of [a < b] from per-bit (generate, propagate) shares, LSB first (last dim)."""
    while g.shape[-1] > 1:
        g_lo, g_hi = g[..., 0::2], g[..., 1::2]
        p_lo, p_hi = p[..., 0::2], p[..., 1::2]
        last = g.shape[-1] == 2
        ands = and_bits(
            ctx, p_hi.contiguous(), [g_lo.contiguous()] + ([] if last else [p_lo.contiguous()]), op
        )
        g = g_hi ^ ands[0]
        p = p_hi if last else ands[1]
    return g[..., 0]


def compare_thresholds(
    ctx: PartyContext, x: torch.Tensor, thresholds: Sequence[float], *, with_products: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shares of b_k = [x >= t_k] (shape (K, *x.shape), integers 0/1) and of b_k * x.

    7 rounds; see the module docstring for bytes and preprocessing.
    """
    pre = ctx.pre
    m_bits = COMPARE_BITS
    shape = tuple(x.shape)
    k = len(thresholds)
    t = ctx.fxp.encode(list(thresholds), what="thresholds").reshape((k,) + (1,) * len(shape))
    r = pre.random(shape)
    r_bits = pre.correlated_bits(
        "cmp/rbits", shape + (m_bits + 1,), lambda: to_bits(r, m_bits + 1)
    )
    mask = pre.random(shape)
    c, f = open_masked(ctx, "cmp", [x + r, x - mask])
    c_k = c.unsqueeze(0) - t  # public, (K, *shape)
    a_bits = to_bits(c_k, m_bits + 1)  # public bits, LSB first
    rb = r_bits.unsqueeze(0).expand((k,) + r_bits.shape)
    not_a = 1 - a_bits[..., :m_bits]
    g = not_a & rb[..., :m_bits]
    p = rb[..., :m_bits] ^ not_a if ctx.pid == 0 else rb[..., :m_bits].clone()
    borrow = _borrow_tree(ctx, g, p, "cmp")
    msb = rb[..., m_bits] ^ borrow
    if ctx.pid == 0:
        msb = msb ^ a_bits[..., m_bits]
        ge = msb ^ 1
    else:
        ge = msb
    # B2A and b * x in one round.
    z = pre.random_bits((k,) + shape)
    z_arith = pre.correlated("cmp/b2a", (k,) + shape, lambda: z.to(torch.int64))
    z_m = (
        pre.correlated("cmp/zm", (k,) + shape, lambda: z.to(torch.int64) * mask)
        if with_products
        else None
    )
    (e,) = open_bits(ctx, "cmp/b2a", [ge ^ z])
    e64 = e.to(torch.int64)
    sign = 1 - 2 * e64
    bits_share = add_public(ctx, sign * z_arith, e64)
    if z_m is None:
        return bits_share, None
    products = e64 * x.unsqueeze(0) + sign * (f.unsqueeze(0) * z_arith + z_m)
    return bits_share, products


def _need(products: torch.Tensor | None) -> torch.Tensor:
    if products is None:  # only reachable with with_products=False
        raise ValueError("compare_thresholds was asked for no products")
    return products


def relu(ctx: PartyContext, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shares of max(x, 0) and of the derivative bit [x >= 0]: 7 rounds (see module doc)."""
    bits, products = compare_thresholds(ctx, x, [0.0])
    return _need(products)[0], bits[0]


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


def piecewise(
    ctx: PartyContext,
    x: torch.Tensor,
    fn: PiecewiseLinear,
    *,
    scale: float = 1.0,
    truncated: bool = True,
    extra_bits: int = 0,
) -> torch.Tensor:
    """Shares of scale * f(x) for a piecewise-linear f: 7 rounds (+1 truncation round if n > 2).

    ``truncated=False`` returns the result at 2f + ``extra_bits`` fractional bits and saves the
    truncation, for callers that fold it into a later one (``extra_bits`` keeps a small
    ``scale`` from costing precision).
    """
    bits, products = compare_thresholds(ctx, x, fn.knots)
    products = _need(products)
    fxp = ctx.fxp
    k = len(fn.knots)
    view = (k,) + (1,) * x.dim()
    if truncated and extra_bits:
        raise ValueError("piecewise: extra_bits needs truncated=False")
    f = fxp.frac_bits
    da = torch.tensor(
        [round(scale * v * 2.0 ** (f + extra_bits)) for v in fn.slope_steps], dtype=torch.int64
    ).reshape(view)
    db = torch.tensor(
        [round(scale * v * 2.0 ** (2 * f + extra_bits)) for v in fn.offset_steps],
        dtype=torch.int64,
    ).reshape(view)
    acc = (da * products + db * bits).sum(0)
    return truncate(ctx, acc) if truncated else acc
