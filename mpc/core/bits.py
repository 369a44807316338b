"""Bit-sliced vectors for XOR (GF(2)) sharing: bit j of N values packed into int64 words.

A *sliced* tensor of shape (P, R * W) holds, for each of P bit positions, the bits of R rows of
N values, 64 to a word (W = ceil(N / 64) words per row; the pad bits of the last word are
don't-cares). Bitwise protocols (AND with a Beaver triple over GF(2), comparison trees) then
work on whole words with torch's bitwise operators: no per-bit unpacking, and the wire and the
dealer carry exactly the packed words.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["packed_words", "slice_bits", "unslice_bits"]


def packed_words(count: int) -> int:
    """Number of int64 words that hold ``count`` bits."""
    return (count + 63) // 64


def slice_bits(x: torch.Tensor, lo: int, count: int) -> torch.Tensor:
    """Bits lo .. lo+count-1 of each value of x (shape (R, N) or (N,)) as a sliced tensor of
    shape (count, R * W): row r of position j is words [r W, (r+1) W) of ``out[j]``.

    Works on bytes (numpy unpack/pack, little-endian bit order), so the intermediate is one
    byte per bit rather than one int64.
    """
    rows = x.reshape(-1, x.shape[-1]) if x.dim() > 0 else x.reshape(1, 1)
    r, n = rows.shape
    w = packed_words(n)
    first, last = lo // 8, (lo + count + 7) // 8
    raw = np.ascontiguousarray(rows.numpy()).view(np.uint8).reshape(r, n, 8)[:, :, first:last]
    bits = np.unpackbits(raw, axis=-1, bitorder="little")  # (r, n, 8 * bytes)
    # (count, r, n); a plain transpose (np.moveaxis normalises its axes in Python, slowly)
    chosen = bits[:, :, lo - 8 * first : lo - 8 * first + count].transpose(2, 0, 1)
    if w * 64 != n:  # zero pad bits (np.pad costs ~0.5 ms in Python on these small arrays)
        padded = np.zeros((count, r, w * 64), dtype=np.uint8)
        padded[:, :, :n] = chosen
        chosen = padded
    packed = np.packbits(np.ascontiguousarray(chosen), axis=-1, bitorder="little")
    return torch.from_numpy(packed.view(np.int64).reshape(count, r * w))


def unslice_bits(words: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse for one position: words of shape (R, W) -> int64 0/1 values of shape (R, n)."""
    raw = np.ascontiguousarray(words.numpy()).view(np.uint8)
    bits = np.unpackbits(raw, axis=-1, count=n, bitorder="little")
    return torch.from_numpy(bits.astype(np.int64))
