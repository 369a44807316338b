"""Arithmetic protocols on additive shares: open, multiply, matmul, truncate [Bea91, SecureML17].

Every function takes the party context first and returns this party's share. Costs are stated
per party for n parties, ``s`` = elements of the operand(s); a "word" is 8 bytes.

Openings here are of *masked* values only (uniformly random to every party); plaintext reveals
go through :func:`reveal`, which the reveal policy guards.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mpc.core import ring
from mpc.core.errors import ProtocolError
from mpc.protocols.context import PartyContext

__all__ = [
    "open_masked",
    "open_bits",
    "add_public",
    "mul_public",
    "truncate",
    "mul",
    "square",
    "truncate_then_square",
    "truncate_then_mul",
    "matmul",
    "matmuls",
    "and_bits",
    "reveal_to_all",
    "TRUNC_BOUND_BITS",
    "TruncationMask",
]

# Dealer-assisted truncation is exact (up to 1 ulp) for |x| < 2^TRUNC_BOUND_BITS.
TRUNC_BOUND_BITS = 62


@dataclass
class TruncationMask:
    """Dealer material of one exact truncation by ``bits`` (see :func:`truncate`): a uniform
    r, and shares of r >> bits (``high``) and of r's top bit (``msb``). Once c = x + 2^62 + r
    is open, x >> bits = P - high + w 2^(64 - bits) msb with public P and wrap gate w."""

    bits: int
    r: torch.Tensor
    high: torch.Tensor
    msb: torch.Tensor

    @classmethod
    def draw(cls, ctx: PartyContext, shape: tuple[int, ...], bits: int) -> TruncationMask:
        pre = ctx.pre
        r = pre.random(shape)
        high = pre.correlated("trunc/r>>f", shape, lambda: ring.rshift_logical(r, bits))
        msb = pre.correlated("trunc/msb", shape, lambda: ring.rshift_logical(r, 63))
        return cls(bits, r, high, msb)

    def masked(self, ctx: PartyContext, x: torch.Tensor) -> torch.Tensor:
        """This party's share of c = x + 2^62 + r (uniform, safe to open)."""
        return add_public(ctx, x, 1 << TRUNC_BOUND_BITS) + self.r

    def wrap(self) -> torch.Tensor:
        """Share of 2^(64 - bits) msb, the correction when the gate is set."""
        return self.msb * (1 << (64 - self.bits))

    def opened(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gate w = [c < 2^63] as unsigned, public P = (c >> bits) - 2^(62 - bits))."""
        return c >= 0, ring.rshift_logical(c, self.bits) - (1 << (TRUNC_BOUND_BITS - self.bits))

    def result(self, ctx: PartyContext, c: torch.Tensor) -> torch.Tensor:
        """This party's share of x >> bits once c = x + 2^62 + r is open (local)."""
        gate, public = self.opened(c)  # gate: [c < 2^63] as unsigned, since bound + 1 = 63
        return add_public(ctx, gate.to(torch.int64) * self.wrap() - self.high, public)

    def candidates(self, a0: torch.Tensor, a1: torch.Tensor) -> list[torch.Tensor]:
        """Shares of the two masked candidates r_high + a0 (w = 0) and r_high - wrap + a1
        (w = 1), opened beside c so that a following product needs no round of its own."""
        return [self.high + a0, self.high - self.wrap() + a1]

    def operand(
        self, c: torch.Tensor, w0: torch.Tensor, w1: torch.Tensor, offset: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(gate, e = x' - a_w) for x' = x >> bits + offset from the opened c, w0, w1."""
        gate, public = self.opened(c)
        return gate, public + offset - torch.where(gate, w1, w0)


def open_masked(ctx: PartyContext, op: str, values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Open masked ring tensors to every party: 1 round, (n-1)*s words sent.

    Callers pass only values that are uniformly masked (x - a with fresh dealer randomness a).
    """
    got = iter(ctx.channel.all_to_all("open/" + op, values).values())
    out = [v + t for v, t in zip(values, next(got), strict=True)]
    for tensors in got:
        for acc, t in zip(out, tensors, strict=True):
            acc += t
    return out


def open_bits(ctx: PartyContext, op: str, values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Open XOR-shared masked bit-sliced words (int64, see ``mpc.core.bits``): 1 round, (n-1)*s
    words sent for s words (64 bits each)."""
    if ctx.dry:  # the dealer's dry run needs only the request order, not the values
        return [torch.zeros_like(v) for v in values]
    got = iter(ctx.channel.all_to_all("openbits/" + op, values).values())
    out = [v ^ t for v, t in zip(values, next(got), strict=True)]
    for tensors in got:
        for acc, t in zip(out, tensors, strict=True):
            acc ^= t
    return out


def open_bits_and_masked(
    ctx: PartyContext, op: str, bits: Sequence[torch.Tensor], masked: Sequence[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """:func:`open_bits` and :func:`open_masked` in one message to each peer: 1 round."""
    got = ctx.channel.all_to_all("open/" + op, [*bits, *masked]).values()
    out_bits = [v.clone() for v in bits]
    out_ring = [v.clone() for v in masked]
    for tensors in got:
        for acc, t in zip(out_bits, tensors[: len(bits)], strict=True):
            acc ^= t
        for acc, t in zip(out_ring, tensors[len(bits) :], strict=True):
            acc += t
    return out_bits, out_ring


def add_public(ctx: PartyContext, x: torch.Tensor, c: torch.Tensor | int) -> torch.Tensor:
    """Share of x + c for a public ring value c (party 0 adds it). Local."""
    return x + c if ctx.pid == 0 else x + torch.zeros_like(x)


def mul_public(ctx: PartyContext, x: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    """Share of x * c for a public real c, truncated back to f fractional bits."""
    return truncate(ctx, x * ctx.fxp.encode(c, what="public factor"))


def truncate(ctx: PartyContext, x: torch.Tensor, bits: int | None = None) -> torch.Tensor:
    """Share of floor(x / 2^bits) (up to 1 ulp), default bits = f.

    * n = 2, local [SecureML17]: 0 rounds, 0 bytes. Party 0 shifts its share, party 1 negates,
      shifts and negates. Correct up to 1 ulp except with probability 2^(l-63) for |x| < 2^l
      (the two signed shares straddle the wrap); e.g. 2^-27 at |x| < 2^36. A wrap adds
      +-2^(64-bits): training records every result it uses for the epoch's range check
      (``mpc.protocols.rangecheck``), which ends the run with NumericError instead.
    * n > 2 (or forced), dealer pair: 1 round, s words; dealer sends 2s words to party 0.
      Open c = x + 2^l + r (r uniform, so c is uniform); then
      floor((x + 2^l) / 2^f) = (c >> f) - (r >> f) + w * 2^(64-f) - borrow, where the wrap bit is
      w = [c < 2^(l+1)] * msb(r), exact for |x| < 2^l with l = 62 (no failure probability);
      borrow in {0, 1} gives the 1-ulp error.

    Both round stochastically and without bias when the shares (or r) are uniform: the result
    is floor(x / 2^bits) + 1 with probability (x mod 2^bits) / 2^bits, so E[result] is
    x / 2^bits exactly. ``training`` relies on this for the weight update.
    """
    f = ctx.fxp.frac_bits if bits is None else bits
    if f == 0:
        return x
    if ctx.truncate_locally:
        if ctx.pid == 0:
            return x >> f
        return -((-x) >> f)
    mask = TruncationMask.draw(ctx, tuple(x.shape), f)
    if ctx.dry:  # the dealer's dry run needs only the material, in order
        return torch.zeros_like(x)
    (c,) = open_masked(ctx, "trunc", [mask.masked(ctx, x)])
    return mask.result(ctx, c)


def _beaver_combine(
    a: torch.Tensor,
    y: torch.Tensor,
    c: torch.Tensor,
    e: torch.Tensor,
    f: torch.Tensor,
    product: str,
) -> torch.Tensor:
    """Share of x*y = c + e*y + a*f for opened e = x - a, f = y - b: summed over the parties,
    e*[y] gives e*f + e*b, so no party adds a public term."""
    if product == "mul":
        return c + e * y + a * f
    return c + ring.matmul(e, y) + ring.matmul(a, f)


def mul(
    ctx: PartyContext, x: torch.Tensor, y: torch.Tensor, *, scaled: bool = True
) -> torch.Tensor:
    """Elementwise product with a Beaver triple [Bea91]: 1 round (+1 for truncation if n > 2).

    Sends (n-1)*(|x|+|y|) words; dealer sends |x*y| words to party 0 (seed compression).
    ``scaled`` truncates by f afterwards (both operands fixed-point); pass False when one
    operand is an integer (e.g. a bit).
    """
    pre = ctx.pre
    # numpy's broadcast rule: torch.broadcast_shapes imports torch.fx and sympy (~1.7 s once)
    out_shape = tuple(np.broadcast_shapes(tuple(x.shape), tuple(y.shape)))
    a = pre.random(tuple(x.shape))
    b = pre.random(tuple(y.shape))
    c = pre.correlated("triple/mul", out_shape, lambda: a * b)
    if ctx.dry:  # the dealer's dry run needs only the material (truncation's too)
        z = torch.zeros_like(c)
    else:
        e, f = open_masked(ctx, "mul", [x - a, y - b])
        z = _beaver_combine(a, y, c, e, f, "mul")
    return truncate(ctx, z) if scaled else z


def square(ctx: PartyContext, x: torch.Tensor, *, scaled: bool = True) -> torch.Tensor:
    """x * x with a dealer square pair (a, a^2) [Bea91]: 1 round (+1 for truncation if n > 2),
    (n-1)*s words sent (half a :func:`mul`); dealer sends s words to party 0."""
    pre = ctx.pre
    a = pre.random(tuple(x.shape))
    a2 = pre.correlated("pair/square", tuple(x.shape), lambda: a * a)
    if ctx.dry:
        z = torch.zeros_like(a2)
    else:
        (e,) = open_masked(ctx, "square", [x - a])
        z = a2 + 2 * e * a  # (e + a)^2 = e^2 + 2ea + a^2
        if ctx.pid == 0:
            z = z + e * e
    return truncate(ctx, z) if scaled else z


def truncate_then_square(
    ctx: PartyContext, x: torch.Tensor, bits: int, offset: int = 0
) -> torch.Tensor:
    """y * y at 2f fractional bits (not truncated) for y = x / 2^bits + offset (public ring
    offset): 1 round for any n.

    n = 2: local truncation, then :func:`square`. n > 2: the truncation's opening of
    c = x + 2^62 + r (see :func:`truncate`) carries the square's masked operand too. Which of
    two values y is depends on the public wrap gate w of c (y = P - r_high + w 2^(64-bits) r_63),
    so both candidates are opened, each under its own square pair:
    w0 = r_high + a0 and w1 = r_high - 2^(64-bits) r_63 + a1; then e = y - a_w = P - w_w is public.
    Sends 3s words to each peer; the dealer sends 4s words to party 0.
    """
    if ctx.truncate_locally:
        return square(ctx, add_public(ctx, truncate(ctx, x, bits), offset), scaled=False)
    pre = ctx.pre
    shape = tuple(x.shape)
    mask = TruncationMask.draw(ctx, shape, bits)
    a0, a1 = pre.random(shape), pre.random(shape)
    sq0 = pre.correlated("pair/square", shape, lambda: a0 * a0)
    sq1 = pre.correlated("pair/square", shape, lambda: a1 * a1)
    if ctx.dry:
        return torch.zeros_like(x)
    c, w0, w1 = open_masked(ctx, "trunc+square", [mask.masked(ctx, x), *mask.candidates(a0, a1)])
    gate, e = mask.operand(c, w0, w1, offset)
    z = torch.where(gate, sq1, sq0) + 2 * e * torch.where(gate, a1, a0)
    return z + e * e if ctx.pid == 0 else z


def truncate_then_mul(
    ctx: PartyContext, x: torch.Tensor, bits: int, y: torch.Tensor, offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x' * y at 2f fractional bits, x') for x' = x / 2^bits + offset and a shared y whose
    shape broadcasts with x's (numpy's rule; e.g. x (B, 1), y (B, K)): 1 round for any n (as
    :func:`truncate_then_square`, with a triple per wrap case: a0 b and a1 b, of the
    broadcast shape). n > 2 sends 3|x| + |y| words to each peer (the truncation and its two
    candidates at x's size: a (B, 1) operand is not widened); the dealer sends
    2|x| + 2|x y| words to party 0."""
    if ctx.truncate_locally:
        xt = add_public(ctx, truncate(ctx, x, bits), offset)
        return mul(ctx, xt, y, scaled=False), xt
    pre = ctx.pre
    shape = tuple(x.shape)
    out_shape = tuple(np.broadcast_shapes(shape, tuple(y.shape)))
    mask = TruncationMask.draw(ctx, shape, bits)
    a0, a1, b = pre.random(shape), pre.random(shape), pre.random(tuple(y.shape))
    c0 = pre.correlated("triple/mul", out_shape, lambda: a0 * b)
    c1 = pre.correlated("triple/mul", out_shape, lambda: a1 * b)
    if ctx.dry:
        return torch.zeros_like(c0), torch.zeros_like(x)
    c, w0, w1, f = open_masked(
        ctx, "trunc+mul", [mask.masked(ctx, x), *mask.candidates(a0, a1), y - b]
    )
    gate, e = mask.operand(c, w0, w1, offset)
    a = torch.where(gate, a1, a0)
    z = torch.where(gate, c1, c0) + e * y + a * f  # as in _beaver_combine
    return z, add_public(ctx, a, e)


def matmul(
    ctx: PartyContext, x: torch.Tensor, y: torch.Tensor, *, scaled: bool = True
) -> torch.Tensor:
    """Matrix product with a matrix Beaver triple [Bea91, SecureML17]: 1 round (+1 if n > 2).

    For (m x k) @ (k x p): sends (n-1)*(mk + kp) words; dealer sends mp words to party 0.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[0]:
        raise ProtocolError(
            f"P{ctx.pid}: matmul: shapes {tuple(x.shape)} @ {tuple(y.shape)} do not align"
        )
    pre = ctx.pre
    a = pre.random(tuple(x.shape))
    b = pre.random(tuple(y.shape))
    c = pre.correlated("triple/matmul", (x.shape[0], y.shape[1]), lambda: ring.matmul(a, b))
    if ctx.dry:
        z = torch.zeros_like(c)
    else:
        e, f = open_masked(ctx, "matmul", [x - a, y - b])
        z = _beaver_combine(a, y, c, e, f, "matmul")
    return truncate(ctx, z) if scaled else z


def matmuls(
    ctx: PartyContext,
    products: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    scaled: Sequence[bool],
) -> list[torch.Tensor]:
    """Several matrix products x_i @ y_i in ONE round [Bea91]: an operand that appears in more
    than one product (the same tensor object, e.g. a backward pass's delta in both
    a^T delta and delta W^T) is masked and opened once, each product with its own dealer
    triple C = M_x @ M_y over the operands' masks. n > 2 adds one round for the truncations
    (all in the same round).

    Sends (n-1) * (distinct operands' words); the dealer sends the products' words to party 0.
    """
    pre = ctx.pre
    masks: dict[int, torch.Tensor] = {}
    operands: list[torch.Tensor] = []
    for x, y in products:
        if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[0]:
            raise ProtocolError(
                f"P{ctx.pid}: matmuls: shapes {tuple(x.shape)} @ {tuple(y.shape)} do not align"
            )
        for t in (x, y):
            if id(t) not in masks:
                masks[id(t)] = pre.random(tuple(t.shape))
                operands.append(t)
    triples = [
        pre.correlated(
            "triple/matmul",
            (x.shape[0], y.shape[1]),
            functools.partial(ring.matmul, masks[id(x)], masks[id(y)]),
        )
        for x, y in products
    ]
    if ctx.dry:
        outs = [torch.zeros_like(c) for c in triples]
    else:
        opened = open_masked(ctx, "matmul", [t - masks[id(t)] for t in operands])
        public = {id(t): e for t, e in zip(operands, opened, strict=True)}
        outs = [
            _beaver_combine(masks[id(x)], y, c, public[id(x)], public[id(y)], "matmul")
            for (x, y), c in zip(products, triples, strict=True)
        ]
    if not any(scaled):
        return outs
    if ctx.truncate_locally:
        return [truncate(ctx, z) if sc else z for z, sc in zip(outs, scaled, strict=True)]
    flat = [z for z, sc in zip(outs, scaled, strict=True) if sc]
    cut = truncate(ctx, torch.cat([z.reshape(-1) for z in flat]))
    done, at = [], 0
    for z, sc in zip(outs, scaled, strict=True):
        if sc:
            done.append(cut[at : at + z.numel()].reshape(z.shape))
            at += z.numel()
        else:
            done.append(z)
    return done


def and_bits(
    ctx: PartyContext, x: torch.Tensor, ys: Sequence[torch.Tensor], op: str
) -> list[torch.Tensor]:
    """XOR shares of x AND y for each y in ys (bit-sliced int64 words), sharing x's mask: 1 round.

    Sends (n-1)*(1 + len(ys))*s words for s words (64 bits each); the dealer sends
    len(ys)*s words to party 0 [Bea91 over GF(2)].
    """
    pre = ctx.pre
    shape = tuple(x.shape)
    a = pre.random_bits(shape)
    bs = [pre.random_bits(shape) for _ in ys]
    cs = [
        pre.correlated_bits("triple/and", shape, functools.partial(torch.bitwise_and, a, b))
        for b in bs
    ]
    if ctx.dry:  # the dealer's dry run needs only the material, in order
        return [torch.zeros(shape, dtype=torch.int64) for _ in ys]
    opened = open_bits(ctx, op, [x ^ a, *[y ^ b for y, b in zip(ys, bs, strict=True)]])
    e, fs = opened[0], opened[1:]
    # e & [y] sums to e&f ^ e&b over the parties: no public term for party 0.
    return [c ^ (e & y) ^ (a & f) for y, c, f in zip(ys, cs, fs, strict=True)]


def reveal_to_all(ctx: PartyContext, x: torch.Tensor, what: str, name: str) -> torch.Tensor:
    """Open x in plaintext to every party, if the reveal policy allows (what, "all")."""
    if ctx.policy is not None:
        ctx.policy.authorize(what, "all", name, x.shape)
    got = ctx.channel.all_to_all("reveal/" + name, [x])
    out = x.clone()
    for (t,) in got.values():
        out += t
    return out
