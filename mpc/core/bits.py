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

    Below ``WIDE_SLICE`` values it works on bytes (numpy unpack/pack, little-endian bit order:
    one byte per bit in between); from there on by 8 x 8 bit-matrix transposes of each byte
    column (:func:`_slice_wide`, ~5 times faster on 2^18 values).
    """
    rows = x.reshape(-1, x.shape[-1]) if x.dim() > 0 else x.reshape(1, 1)
    r, n = rows.shape
    if r * n >= WIDE_SLICE:
        return _slice_wide(rows, lo, count)
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


WIDE_SLICE = 4096  # values from which slice_bits transposes bit matrices (measured crossover)
_DELTA_SWAPS = tuple(
    (np.uint64(shift), np.uint64(mask))
    for shift, mask in (
        (7, 0x00AA00AA00AA00AA), (14, 0x0000CCCC0000CCCC), (28, 0x00000000F0F0F0F0)
    )
)


def _transpose8(v: np.ndarray) -> np.ndarray:
    """Each uint64 as an 8 x 8 bit matrix (bit 8 i + k: row i, column k) transposed, by three
    delta swaps [Warren, Hacker's Delight, 7-3]: byte k of the result holds bit k of every
    byte of the input."""
    for shift, mask in _DELTA_SWAPS:
        t = (v ^ (v >> shift)) & mask
        v = v ^ t ^ (t << shift)
    return v


def _slice_wide(rows: torch.Tensor, lo: int, count: int) -> torch.Tensor:
    """:func:`slice_bits` of (R, N) values: each byte column the positions touch is gathered
    (8 values' bytes per uint64), transposed (:func:`_transpose8`), and its bytes k are the
    packed bits k of those 8 values."""
    a = np.ascontiguousarray(rows.numpy())
    r, n = a.shape
    w = packed_words(n)
    if w * 64 != n:  # zero pad bits
        padded = np.zeros((r, w * 64), dtype=np.int64)
        padded[:, :n] = a
        a = padded
    columns = a.view(np.uint8).reshape(r, w * 64, 8)
    out = np.empty((count, r, w * 8), dtype=np.uint8)
    for byte in range(lo // 8, (lo + count - 1) // 8 + 1):
        packed = _transpose8(np.ascontiguousarray(columns[:, :, byte]).view(np.uint64))
        bits = packed.view(np.uint8).reshape(r, w * 8, 8)
        for j in range(max(lo, 8 * byte), min(lo + count, 8 * byte + 8)):
            out[j - lo] = bits[:, :, j - 8 * byte]
    return torch.from_numpy(out.view(np.int64).reshape(count, r * w))


def unslice_bits(words: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse for one position: words of shape (R, W) -> int64 0/1 values of shape (R, n)."""
    raw = np.ascontiguousarray(words.numpy()).view(np.uint8)
    bits = np.unpackbits(raw, axis=-1, count=n, bitorder="little")
    return torch.from_numpy(bits.astype(np.int64))
