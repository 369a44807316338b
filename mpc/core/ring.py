"""Arithmetic in the ring Z_2^64 on torch int64 tensors.

torch int64 arithmetic wraps around modulo 2^64 (two's complement), so ``+``, ``-`` and ``*``
on int64 tensors are already ring operations. This module adds what torch does not give
directly: an exact ring matmul with a per-device choice of algorithm, unsigned comparison and
logical right shift.

Ring matmul: on CPU torch's int64 matmul is vectorised and within 2x of float64 BLAS, so it is
used directly. Devices without fast int64 matmul (CUDA GPUs) use a limb-split float64 product:
each operand is cut into 16-bit limbs, every limb product is a float64 BLAS matmul that stays
exact while ``k * 2^32 < 2^53`` (k = inner dimension <= 2^21), and the limb products that still
matter modulo 2^64 (i + j < 4, i.e. 10 products) are recombined in int64.

No randomness and no I/O here.
"""

from __future__ import annotations

import torch

__all__ = [
    "RING_BITS",
    "matmul",
    "matmul_int64",
    "matmul_limbs",
    "matmul_method",
    "lshift",
    "rshift_arith",
    "rshift_logical",
    "unsigned_lt",
    "from_unsigned_bytes",
]

RING_BITS = 64
_LIMB_BITS = 16
_LIMB_MASK = (1 << _LIMB_BITS) - 1
_MAX_EXACT_INNER = 1 << (53 - 2 * _LIMB_BITS)  # float64 partial sums stay exact below 2^53


def matmul_int64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact ring matmul with torch's int64 kernel (wraps modulo 2^64)."""
    return torch.matmul(a, b)


def _limbs(x: torch.Tensor) -> list[torch.Tensor]:
    # Logical shifts on int64 via masking after arithmetic shift.
    return [((x >> (_LIMB_BITS * i)) & _LIMB_MASK).to(torch.float64) for i in range(4)]


def matmul_limbs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact ring matmul from float64 BLAS products of 16-bit limbs.

    Uses 10 float64 matmuls (limb pairs with i + j < 4). Exact while the inner dimension is at
    most 2^21, because each partial sum of limb products is below 2^32 * 2^21 = 2^53.
    """
    k = a.shape[-1]
    if k > _MAX_EXACT_INNER:
        raise ValueError(
            f"matmul_limbs: inner dimension {k} exceeds exact bound {_MAX_EXACT_INNER}"
        )
    la, lb = _limbs(a), _limbs(b)
    out: torch.Tensor | None = None
    for i in range(4):
        for j in range(4 - i):
            part = torch.matmul(la[i], lb[j]).to(torch.int64) << (_LIMB_BITS * (i + j))
            out = part if out is None else out + part
    assert out is not None  # loop runs at least once; not input validation
    return out


def matmul_method(device: torch.device | str) -> str:
    """Name of the exact ring matmul used on ``device``: ``"int64"`` on CPU, else ``"limbs"``."""
    return "int64" if torch.device(device).type == "cpu" else "limbs"


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact matrix product in Z_2^64 of int64 tensors, with the fastest exact kernel here."""
    if matmul_method(a.device) == "int64":
        return torch.matmul(a, b)
    return matmul_limbs(a, b)


def lshift(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Multiply by 2^bits in the ring."""
    return x << bits


def rshift_arith(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Arithmetic (sign-extending) right shift: floor division by 2^bits of the signed value."""
    return x >> bits


def rshift_logical(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of the unsigned 64-bit value."""
    if bits == 0:
        return x
    return (x >> bits) & ((1 << (RING_BITS - bits)) - 1)


def unsigned_lt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise ``a < b`` comparing int64 tensors as unsigned 64-bit values."""
    flip = -(1 << 63)
    return (a ^ flip) < (b ^ flip)


def from_unsigned_bytes(
    buf: bytes | bytearray | memoryview, shape: tuple[int, ...]
) -> torch.Tensor:
    """Reinterpret little-endian 8-byte words as an int64 tensor of ``shape`` (copying)."""
    return torch.frombuffer(bytearray(buf), dtype=torch.int64).reshape(shape)
