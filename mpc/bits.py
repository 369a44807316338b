"""Bit vectors for XOR (GF(2)) sharing: unpacked as uint8 0/1 tensors, packed into int64 words.

Comparison protocols work on unpacked bits (one uint8 per bit, easy slicing) and pack them
only to send or to draw from the PRG, so the wire and the dealer carry 1 bit per bit.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["pack_bits", "unpack_bits", "packed_words", "to_bits", "from_bits"]


def packed_words(count: int) -> int:
    """Number of int64 words that hold ``count`` bits."""
    return (count + 63) // 64


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a uint8 0/1 tensor (any shape, row-major) into int64 words."""
    flat = bits.reshape(-1).numpy()
    packed = np.packbits(flat)
    words = packed_words(flat.size)
    buf = np.zeros(words * 8, dtype=np.uint8)
    buf[: packed.size] = packed
    return torch.from_numpy(buf.view(np.int64))


def unpack_bits(words: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_bits` for a bit tensor of ``shape``."""
    count = 1
    for s in shape:
        count *= int(s)
    raw = np.ascontiguousarray(words.numpy()).view(np.uint8)
    return torch.from_numpy(np.unpackbits(raw, count=count)).reshape(shape)


def to_bits(x: torch.Tensor, nbits: int) -> torch.Tensor:
    """Low ``nbits`` bits of each int64 element, LSB first, as uint8 (adds a last dimension)."""
    shifts = torch.arange(nbits, dtype=torch.int64)
    return ((x.unsqueeze(-1) >> shifts) & 1).to(torch.uint8)


def from_bits(bits: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_bits` (LSB first, last dimension): int64 values."""
    nbits = bits.shape[-1]
    weights = torch.ones(nbits, dtype=torch.int64) << torch.arange(nbits, dtype=torch.int64)
    return (bits.to(torch.int64) * weights).sum(-1)
