"""Comparing a public value with XOR-shared mask bits four bits at a time, with no round.

The borrow tree of ``compare.py`` starts from per-bit (generate, propagate) pairs of a public
value a and the dealer's secret mask bits r. Within a nibble (4 bits), [a < r] and [a == r] are
Boolean functions of a and r; written in algebraic normal form they are
    F(a, r) = XOR over U, T of M_F[U, T] a^U r^T      (a^U = product of the a bits in U),
bilinear in the 16 monomials of a and the 16 monomials of r. With XOR shares of the 15
non-constant r-monomials from the dealer, every party evaluates its share of F locally:
the tree's first two levels (16 bits -> 4 nibble pairs) cost no round and no opening, which
takes the comparison from 7 to 5 rounds. (The same idea as a dealer-provided product table,
e.g. the multi-fan-in AND gates of [Damgard06]; here applied to a public-vs-secret compare.)

Costs per nibble and element: the dealer sends party 0 15 bits of monomials (instead of
the 12 AND triples and 36 opened bits of two binary tree levels per threshold).

All tensors are bit-sliced int64 words (``mpc.bits``): a nibble tensor has the 4 bits of each of
its groups in dimension 0 (``members``), then groups, then words.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["xor_reduce", "monomials", "mask_monomials", "mask_tables", "nibble_compare", "NIBBLE"]

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


def _groups(positions: torch.Tensor) -> torch.Tensor:
    """Sliced (16, W) positions -> (4 members, 4 nibbles, W): position 4j + i -> [i, j]."""
    return positions.reshape(NIBBLE, NIBBLE, -1).transpose(0, 1)


def mask_monomials(positions: torch.Tensor) -> torch.Tensor:
    """The dealer's 15 non-constant r-monomials of 16 sliced bit positions: (15, 4, W)."""
    return monomials(_groups(positions))[1:].contiguous()


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


def mask_tables(pid: int, r_monomials: torch.Tensor) -> torch.Tensor:
    """This party's shares of S_F[U] = XOR_T M_F[U, T] r^T for F = [a < r], [a == r]:
    (2, 16 U, 4, W) from its shares of the 15 r-monomials (15, 4, W). Local."""
    const = torch.full((1,) + tuple(r_monomials.shape[1:]), -1 if pid == 0 else 0)
    r_all = torch.cat([const, r_monomials])  # (16 T, 4, W)
    return xor_reduce(_anf()[:, :, :, None, None] & r_all, 2)


def nibble_compare(
    public: torch.Tensor, tables: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """XOR shares of per-nibble ([a < r], [a == r]) = XOR_U a^U S_F[U] for 16 public sliced
    positions (16, W) and the tables of :func:`mask_tables` laid out on the same W words.
    Returns (G, P), each (4 nibbles, W). Local: no communication."""
    a_mono = monomials(_groups(public))  # (16 U, 4, W)
    gp = xor_reduce(a_mono & tables, 1)  # (2, 4, W)
    return gp[0], gp[1]
