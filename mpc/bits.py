"""Bit-sliced vectors for XOR (GF(2)) sharing: bit j of N values packed into int64 words.

A *sliced* tensor of shape (P, R * W) holds, for each of P bit positions, the bits of R rows of
N values, 64 to a word (W = ceil(N / 64) words per row; the pad bits of the last word are
don't-cares). Bitwise protocols (AND with a Beaver triple over GF(2), comparison trees) then
work on whole words with torch's bitwise operators: no per-bit unpacking, and the wire and the
dealer carry exactly the packed words.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["packed_words", "slice_bits", "unslice_bits"]

_SHIFTS = torch.arange(64, dtype=torch.int64)


def packed_words(count: int) -> int:
    """Number of int64 words that hold ``count`` bits."""
    return (count + 63) // 64


def slice_bits(x: torch.Tensor, lo: int, count: int) -> torch.Tensor:
    """Bits lo .. lo+count-1 of each value of x (shape (R, N) or (N,)) as a sliced tensor of
    shape (count, R * W): row r of position j is words [r W, (r+1) W) of ``out[j]``."""
    rows = x.reshape(-1, x.shape[-1]) if x.dim() > 0 else x.reshape(1, 1)
    r, n = rows.shape
    w = packed_words(n)
    bits = (rows >> _positions(lo, count)) & 1  # (count, R, N)
    if w * 64 != n:
        bits = torch.nn.functional.pad(bits, (0, w * 64 - n))
    words = (bits.reshape(count, r, w, 64) << _SHIFTS).sum(-1)  # distinct powers: exact
    return words.reshape(count, r * w)


@functools.lru_cache(maxsize=64)
def _positions(lo: int, count: int) -> torch.Tensor:
    return torch.arange(lo, lo + count, dtype=torch.int64).reshape(count, 1, 1)


def unslice_bits(words: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse for one position: words of shape (R, W) -> int64 0/1 values of shape (R, n)."""
    r, w = words.shape
    bits = (words.unsqueeze(-1) >> _SHIFTS) & 1
    return bits.reshape(r, w * 64)[:, :n]
