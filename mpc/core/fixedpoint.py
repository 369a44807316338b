"""Fixed-point encoding of real numbers into Z_2^64.

A real ``v`` is encoded as the integer ``round(v * 2^f)`` modulo 2^64 (two's complement), with
``f = FRAC_BITS = 16`` fractional bits by default. A product of two encodings carries ``2f``
fractional bits and must be truncated by ``f`` bits (see ``protocols.truncate``).

Range: a value is accepted when ``|v| * 2^f < 2^(MAX_MAGNITUDE_BITS)``, i.e. it leaves enough head
room below 2^63 that a product of two such values fits before truncation
(``MAX_MAGNITUDE_BITS = 47`` by default leaves ``|v| < 2^31`` at f = 16). Values outside that
range, NaN and infinities raise :class:`~mpc.core.errors.EncodingError`.

No parties, randomness or I/O here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mpc.core.errors import EncodingError

__all__ = ["FRAC_BITS", "FixedPoint", "DEFAULT", "encode", "decode"]

FRAC_BITS = 16


@dataclass(frozen=True)
class FixedPoint:
    """A fixed-point format: ``frac_bits`` fractional bits, inputs bounded by 2^max_bits."""

    frac_bits: int = FRAC_BITS
    max_bits: int = 47

    def __post_init__(self) -> None:
        if not 0 <= self.frac_bits <= 30:
            raise ValueError(f"FixedPoint: frac_bits must be in [0, 30], got {self.frac_bits}")
        if not self.frac_bits < self.max_bits <= 62:
            raise ValueError(f"FixedPoint: max_bits must be in ({self.frac_bits}, 62]")

    @property
    def scale(self) -> int:
        """2^frac_bits, the encoding of 1.0."""
        return 1 << self.frac_bits

    @property
    def max_value(self) -> float:
        """Largest magnitude accepted by :meth:`encode`."""
        return float(2 ** (self.max_bits - self.frac_bits))

    def encode(self, values: object, *, what: str = "value") -> torch.Tensor:
        """Encode reals (array-like) as ring elements; raises EncodingError on overflow/NaN."""
        if isinstance(values, float | int):  # scalar fast path (public factors, every step)
            v = float(values)
            if not math.isfinite(v) or abs(v) >= self.max_value:
                raise EncodingError(f"encode: {what} is NaN, inf or outside the fixed-point range")
            return torch.tensor(round(v * self.scale), dtype=torch.int64)
        arr = np.asarray(values, dtype=np.float64)
        # One pass each for max and min, no temporary: NaN makes both comparisons false, and
        # an infinity exceeds the range (a whole dataset's masking chunk encodes in ~3 passes).
        if arr.size and not (float(arr.max()) < self.max_value
                             and float(arr.min()) > -self.max_value):
            if not bool(np.isfinite(arr).all()):
                raise EncodingError(f"encode: {what} of shape {arr.shape} has NaN or inf")
            raise EncodingError(
                f"encode: {what} of shape {arr.shape} exceeds the fixed-point range "
                f"|v| < 2^{self.max_bits - self.frac_bits}"
            )
        scaled = arr * self.scale
        np.rint(scaled, out=scaled)  # round half to even, as torch.round
        return torch.from_numpy(scaled.astype(np.int64))

    def decode(self, encoded: torch.Tensor) -> torch.Tensor:
        """Decode ring elements (signed) to float64 reals."""
        return encoded.to(torch.float64) / self.scale


DEFAULT = FixedPoint()


def encode(values: object, *, what: str = "value") -> torch.Tensor:
    """Encode with the default format (16 fractional bits)."""
    return DEFAULT.encode(values, what=what)


def decode(encoded: torch.Tensor) -> torch.Tensor:
    """Decode with the default format (16 fractional bits)."""
    return DEFAULT.decode(encoded)
