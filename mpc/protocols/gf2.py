"""Bitwise protocols on XOR shares that save rounds with dealer-provided mask products.

1. Nibble comparison, no round. The borrow tree of ``compare.py`` starts from per-bit
(generate, propagate) pairs of a public value a and the dealer's secret mask bits r. Within
a nibble (4 bits), [a < r] and [a == r] are Boolean functions of a and r; written in
algebraic normal form they are
    F(a, r) = XOR over U, T of M_F[U, T] a^U r^T      (a^U = product of the a bits in U),
bilinear in the 16 monomials of a and the 16 monomials of r. With XOR shares of the 15
non-constant r-monomials from the dealer, every party evaluates its share of F locally:
the tree's first two levels (16 bits -> 4 nibble pairs) cost no round and no opening.
Cost per nibble and element: the dealer sends party 0 15 bits of monomials (instead of
the 12 AND triples and 36 opened bits of two binary tree levels per threshold).

2. Multi-factor AND in one round (:func:`and_products`): Beaver's trick with the dealer
sharing the products of the masks, as in the unbounded fan-in multiplication of [DFKNT06];
:func:`combine_nibbles` folds 4 nibbles' (generate, propagate) pairs in one round instead of
two. Together they take a comparison from 7 rounds (binary tree over 16 bits) to 4.

[DFKNT06] Damgard, Fitzi, Kiltz, Nielsen, Toft: Unconditionally secure constant-rounds
multi-party computation for equality, comparison, bits and exponentiation. TCC 2006.

All tensors are bit-sliced int64 words (``mpc.core.bits``): a nibble tensor has the 4 bits of each
of
its groups in dimension 0 (``members``), then groups, then words.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from mpc.protocols.arith import open_bits
from mpc.protocols.context import PartyContext

__all__ = [
    "xor_reduce",
    "monomials",
    "mask_monomials",
    "mask_tables",
    "nibble_compare",
    "and_products",
    "and_all",
    "combine_nibbles",
    "NIBBLE",
]

NIBBLE = 4
_ALL = 1 << NIBBLE  # 16 monomials per nibble


def xor_reduce(x: torch.Tensor, dim: int) -> torch.Tensor:
    """XOR of x along ``dim`` (a power-of-two size) by halving."""
    while x.shape[dim] > 1:
        lo, hi = x.chunk(2, dim)
        x = lo ^ hi
    return x.squeeze(dim)


def monomials(bits: torch.Tensor) -> torch.Tensor:
    """All 16 products of the 4 members of ``bits`` (shape (4, ...)): index U (a bitmask of
    members) holds the AND of members in U; index 0 is all ones."""
    out = torch.full_like(bits[:1], -1)
    for member in bits.unbind(0):  # doubling: the new half has this member's bit set in U
        out = torch.cat([out, out & member])
    return out


def _monomials_np(bits: np.ndarray) -> np.ndarray:
    """:func:`monomials` for an int64 array of any number m of members: (2^m, ...)."""
    m = bits.shape[0]
    out = np.empty((1 << m,) + bits.shape[1:], dtype=np.int64)
    out[0] = -1
    for i in range(m):  # index U has member i's bit set in U from 2^i on
        h = 1 << i
        np.bitwise_and(out[:h], bits[i], out=out[h : 2 * h])
    return out


def _groups(positions: torch.Tensor) -> torch.Tensor:
    """Sliced (16, W) positions -> (4 members, 4 nibbles, W): position 4j + i -> [i, j]."""
    return positions.reshape(NIBBLE, NIBBLE, -1).transpose(0, 1)


def mask_monomials(positions: torch.Tensor) -> torch.Tensor:
    """The dealer's 15 non-constant r-monomials of 16 sliced bit positions: (15, 4, W)."""
    groups = positions.numpy().reshape(NIBBLE, NIBBLE, -1).transpose(1, 0, 2)
    return torch.from_numpy(_monomials_np(groups)[1:])


@functools.cache
def _anf() -> torch.Tensor:
    """M_F for F = [a < r] and [a == r] on nibbles, as word masks (0 or all ones): (2, 16, 16)."""
    table = torch.zeros(2, _ALL, _ALL, dtype=torch.int64)
    for a in range(_ALL):
        for r in range(_ALL):
            table[0, a, r] = int(a < r)
            table[1, a, r] = int(a == r)
    # Moebius transform in both variables: coefficients of the algebraic normal form.
    for axis in (1, 2):
        for bit in range(NIBBLE):
            for u in range(_ALL):
                if u >> bit & 1:
                    idx_hi: list[int | slice] = [slice(None)] * 3
                    idx_lo: list[int | slice] = [slice(None)] * 3
                    idx_hi[axis], idx_lo[axis] = u, u ^ (1 << bit)
                    table[tuple(idx_hi)] ^= table[tuple(idx_lo)]
    return -table  # 1 -> all ones


@functools.cache
def _anf_np() -> np.ndarray:
    """:func:`_anf` as a numpy array shaped to broadcast over (T, 4, W): (2, 16, 16, 1, 1)."""
    return _anf().numpy()[:, :, :, None, None].copy()


def mask_tables(pid: int, r_monomials: torch.Tensor, *, dense: bool | None = None) -> torch.Tensor:
    """This party's shares of S_F[U] = XOR_T M_F[U, T] r^T for F = [a < r], [a == r]:
    (2, 16 U, 4, W) from its shares of the 15 r-monomials (15, 4, W). Local.

    Tiny inputs contract with the 16 x 16 ANF matrices directly (few, small ops); others (or
    ``dense=False``) use the equivalent butterflies, in place on one output array: minterms
    m_v = XOR_{T >= v} r^T, then F(a, r) for every public a (P: m_a; G: XOR_{v > a} m_v, a
    running XOR), then S_F[U] = XOR_{a <= U} F(a, r). Both are a dozen numpy calls; the
    butterflies touch 16x less memory (at W = 32 words: 35 against 65 us).
    """
    r = r_monomials.numpy()
    tail = r.shape[1:]
    if dense if dense is not None else r[0].size <= _DENSE_MAX_WORDS:
        r_np = np.empty((_ALL,) + tail, dtype=np.int64)  # (16 T, 4, W)
        r_np[0] = -1 if pid == 0 else 0
        r_np[1:] = r
        return torch.from_numpy(np.bitwise_xor.reduce(_anf_np() & r_np, axis=2))
    out = np.empty((2, _ALL) + tail, dtype=np.int64)
    minterms, less = out[1], out[0]
    minterms[0] = -1 if pid == 0 else 0  # r^{} = 1 (party 0's share of the constant)
    minterms[1:] = r
    cube = minterms.reshape((2,) * NIBBLE + tail)  # index bit i of T on axis 3 - i
    for axis in range(NIBBLE):  # superset sums: m_v = XOR_{T >= v} r^T
        low, high = _HALVES[axis]
        cube[low] ^= cube[high]
    less[_ALL - 1] = 0  # [a < r] = XOR_{v > a} m_v: a running XOR from the top
    np.bitwise_xor.accumulate(minterms[:0:-1], axis=0, out=less[_ALL - 2 :: -1])
    both = out.reshape((2,) + (2,) * NIBBLE + tail)
    for axis in range(1, NIBBLE + 1):  # subset sums over a: S_F[U] = XOR_{a <= U} F(a, r)
        low, high = _HALVES[axis]
        both[high] ^= both[low]
    return torch.from_numpy(out)


_DENSE_MAX_WORDS = 32  # the dense contraction builds 512 words per input word
_HALVES = [((slice(None),) * axis + (0,), (slice(None),) * axis + (1,)) for axis in range(5)]


def nibble_compare(
    public: torch.Tensor, tables: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """XOR shares of per-nibble ([a < r], [a == r]) = XOR_U a^U S_F[U] for 16 public sliced
    positions (16, W) and the tables of :func:`mask_tables` laid out on the same W words.
    Returns (G, P), each (4 nibbles, W). Local: no communication."""
    groups = public.numpy().reshape(NIBBLE, NIBBLE, -1).transpose(1, 0, 2)
    a_mono = _monomials_np(groups)  # (16 U, 4, W)
    gp = torch.from_numpy(np.bitwise_xor.reduce(a_mono & tables.numpy(), axis=1))  # (2, 4, W)
    return gp[0], gp[1]


def _subsets(members: tuple[int, ...]) -> list[tuple[int, ...]]:
    """All subsets of ``members`` indexed by bitmask over its positions."""
    return [
        tuple(m for j, m in enumerate(members) if u >> j & 1) for u in range(1 << len(members))
    ]


def and_products(
    ctx: PartyContext, xs: Sequence[torch.Tensor], sets: Sequence[tuple[int, ...]], op: str
) -> list[torch.Tensor]:
    """XOR shares of the AND of x_i over i in S, for each S in ``sets``, in one round.

    Beaver's multiplication generalised to several factors [Bea91, DFKNT06]: every x_i
    used is opened once masked, d_i = x_i xor a_i; the dealer XOR-shares the products of the
    masks a_T for every subset T (|T| >= 2) of a set, and then
        prod_{i in S} x_i = XOR over T subset of S of (prod_{i in S - T} d_i) a_T,
    local after the opening. Sends (n-1) words per word of each x_i used; the dealer sends
    party 0 one word per distinct mask product.
    """
    pre = ctx.pre
    shape = tuple(xs[0].shape)
    used, products, plan = _plan(tuple(tuple(sorted(s)) for s in sets))
    masks = pre.random_bits((len(used),) + shape)  # row j masks x_used[j]

    def mask_products() -> torch.Tensor:  # the dealer's: rows of the masks' monomial table
        return torch.from_numpy(_monomials_np(masks.numpy())[products])

    table = pre.correlated_bits("triple/andN", (len(products),) + shape, mask_products)
    if ctx.dry:
        return [torch.zeros(shape, dtype=torch.int64) for _ in sets]
    (d,) = open_bits(ctx, op, [torch.stack([xs[i] for i in used]) ^ masks])
    used_rows = len(used)
    shares = np.empty((1 + used_rows + len(products),) + shape, dtype=np.int64)
    shares[0] = -1 if ctx.pid == 0 else 0  # a_T for every T, in _plan's numbering
    shares[1 : 1 + used_rows] = masks.numpy()
    shares[1 + used_rows :] = table.numpy()
    # Every set's terms D(S - T) & a_T at once: D from one table of all monomials of the
    # opened inputs, then one XOR per set (a segmented reduction).
    d_index, a_index, starts = plan
    terms = _monomials_np(d.numpy())[d_index] & shares[a_index]
    out = np.bitwise_xor.reduceat(terms, starts, axis=0)
    return [torch.from_numpy(row) for row in out]


MAX_AND_INPUTS = 10  # and_products builds a table of all 2^m monomials of its m opened inputs


@functools.lru_cache(maxsize=64)
def _plan(
    sets: tuple[tuple[int, ...], ...],
) -> tuple[list[int], np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For :func:`and_products`: the inputs used; the mask products the dealer shares, as
    bitmasks over the used inputs (rows of their monomial table); and the terms of all sets:
    for set S and subset T, the index of the public monomial D(S - T) (a bitmask over the used
    inputs) and of a_T among the shares (0: the empty product, 1..: single masks, then the
    dealer's products), with each set's first term."""
    used = sorted({i for s in sets for i in s})
    if len(used) > MAX_AND_INPUTS:
        raise ValueError(f"and_products: {len(used)} inputs, at most {MAX_AND_INPUTS}")
    row = {i: j for j, i in enumerate(used)}
    products = sorted({t for s in sets for t in _subsets(s) if len(t) >= 2})
    index: dict[tuple[int, ...], int] = {(): 0} | {(i,): 1 + row[i] for i in used}
    index |= {t: 1 + len(used) + k for k, t in enumerate(products)}
    d_index: list[int] = []
    a_index: list[int] = []
    starts: list[int] = []
    for s in sets:
        starts.append(len(d_index))
        for t in _subsets(s):
            d_index.append(sum(1 << row[i] for i in s if i not in t))
            a_index.append(index[t])
    plan = (np.array(d_index), np.array(a_index), np.array(starts))
    product_masks = np.array([sum(1 << row[i] for i in t) for t in products], dtype=np.intp)
    return used, product_masks, plan


def and_all(ctx: PartyContext, bits: Sequence[torch.Tensor], op: str,
            fan_in: int = MAX_AND_INPUTS) -> torch.Tensor:
    """XOR shares of the AND of all of ``bits`` (tensors of one shape): ceil(log_fan_in m)
    rounds of :func:`and_products` (1 for m <= ``fan_in``). The factors of a round are cut into
    groups of equal size (padded with the constant 1) and the groups laid side by side, so that
    each round is one AND of ``fan_in`` or fewer factors: the dealer sends party 0
    2^g - g - 1 words per word of each group of g factors, each party sends g."""
    if not bits:
        raise ValueError("and_all: no factors")
    if not 2 <= fan_in <= MAX_AND_INPUTS:
        raise ValueError(f"and_all: fan-in {fan_in} outside [2, {MAX_AND_INPUTS}]")
    level = list(bits)
    while len(level) > 1:
        groups = -(-len(level) // fan_in)
        per = -(-len(level) // groups)
        one = torch.full_like(level[0], -1 if ctx.pid == 0 else 0)  # XOR shares of all ones
        level += [one] * (groups * per - len(level))
        xs = [torch.cat([level[g * per + m] for g in range(groups)]) for m in range(per)]
        (product,) = and_products(ctx, xs, [tuple(range(per))], op)
        level = list(product.chunk(groups))
    return level[0]


def combine_nibbles(
    ctx: PartyContext, g: torch.Tensor, p: torch.Tensor, op: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(generate, propagate) of 4 consecutive groups (g, p of shape (4, ...), LSB first) in
    one round: G = g3 ^ p3 g2 ^ p3 p2 g1 ^ p3 p2 p1 g0 and P = p3 p2 p1 p0.

    Opens 7 words per word of a group and needs 22 dealer mask products, against 9 words,
    6 triples and 2 rounds for two binary tree levels."""
    xs = [g[0], g[1], g[2], p[0], p[1], p[2], p[3]]
    g0, g1, g2, p0, p1, p2, p3 = range(7)
    terms = and_products(
        ctx, xs, [(g2, p3), (g1, p2, p3), (g0, p1, p2, p3), (p0, p1, p2, p3)], op
    )
    return g[3] ^ terms[0] ^ terms[1] ^ terms[2], terms[3]
