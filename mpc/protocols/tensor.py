"""``SharedTensor``: one party's share of a secret fixed-point tensor, with operator overloads.

Operators call the protocols with the tensor's party context; nothing here holds protocol
logic. ``a + b`` and public scalars are local; ``a * b`` and ``a @ b`` of two shared tensors use
Beaver triples (1 round, +1 truncation round for n > 2) [Bea91]; comparisons, ``relu`` and
``sigmoid`` use ``compare.py``. Branching on a secret (``bool(x)``, ``if x``) raises
``TypeError``: a party cannot know the value, and pretending to would be a bug.
"""

from __future__ import annotations

from typing import Any

import torch

from mpc.protocols import arith as protocols
from mpc.protocols.compare import compare_thresholds, relu
from mpc.protocols.context import PartyContext
from mpc.protocols.functions import exp, reciprocal, sigmoid

__all__ = ["SharedTensor"]

Operand = "SharedTensor | float | int | torch.Tensor"


class SharedTensor:
    """This party's additive share of a secret tensor (fixed point, ``ctx.fxp``)."""

    __slots__ = ("ctx", "share")

    def __init__(self, ctx: PartyContext, share: torch.Tensor) -> None:
        if share.dtype != torch.int64:
            raise TypeError(f"SharedTensor: share must be int64, got {share.dtype}")
        self.ctx = ctx
        self.share = share

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_public(cls, ctx: PartyContext, values: Any) -> SharedTensor:
        """A trivial sharing of a public value (party 0 holds it, the others hold 0)."""
        enc = ctx.fxp.encode(values, what="public value")
        return cls(ctx, enc if ctx.pid == 0 else torch.zeros_like(enc))

    def _wrap(self, share: torch.Tensor) -> SharedTensor:
        return SharedTensor(self.ctx, share)

    def _public(self, value: float | int | torch.Tensor) -> torch.Tensor:
        return self.ctx.fxp.encode(value, what="public operand")

    # -- shape --------------------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return self.share.shape

    def __len__(self) -> int:
        return len(self.share)

    def __getitem__(self, index: Any) -> SharedTensor:
        return self._wrap(self.share[index])

    @property
    def T(self) -> SharedTensor:  # noqa: N802 - mirrors torch
        return self._wrap(self.share.T.contiguous())

    def reshape(self, *shape: int) -> SharedTensor:
        return self._wrap(self.share.reshape(*shape))

    def sum(self, dim: int | None = None) -> SharedTensor:
        return self._wrap(self.share.sum() if dim is None else self.share.sum(dim))

    # -- arithmetic ---------------------------------------------------------------------------
    def __add__(self, other: Any) -> SharedTensor:
        if isinstance(other, SharedTensor):
            return self._wrap(self.share + other.share)
        return self._wrap(protocols.add_public(self.ctx, self.share, self._public(other)))

    __radd__ = __add__

    def __neg__(self) -> SharedTensor:
        return self._wrap(-self.share)

    def __sub__(self, other: Any) -> SharedTensor:
        return self + (-other)

    def __rsub__(self, other: Any) -> SharedTensor:
        return (-self) + other

    def __mul__(self, other: Any) -> SharedTensor:
        if isinstance(other, SharedTensor):
            return self._wrap(protocols.mul(self.ctx, self.share, other.share))
        if isinstance(other, int) and not isinstance(other, bool):
            return self._wrap(self.share * other)  # integer factor: exact, no truncation
        return self._wrap(protocols.mul_public(self.ctx, self.share, other))

    __rmul__ = __mul__

    def __matmul__(self, other: Any) -> SharedTensor:
        if isinstance(other, SharedTensor):
            return self._wrap(protocols.matmul(self.ctx, self.share, other.share))
        return self._wrap(protocols.truncate(self.ctx, self.share @ self._public(other)))

    def __truediv__(self, other: Any) -> SharedTensor:
        if isinstance(other, SharedTensor):
            raise TypeError("SharedTensor / SharedTensor: use x * y.reciprocal(hi)")
        return self * (1.0 / float(other))

    # -- non-linear ---------------------------------------------------------------------------
    def __ge__(self, other: float) -> SharedTensor:  # type: ignore[override]
        """Shares of [x >= t] (integer 0/1) for a public threshold t: 4 rounds."""
        bits, _ = compare_thresholds(self.ctx, self.share, [float(other)], with_products=False)
        return self._wrap(bits[0] << self.ctx.fxp.frac_bits)

    def __lt__(self, other: float) -> SharedTensor:  # type: ignore[override]
        return 1 - (self >= other)

    def relu(self) -> SharedTensor:
        return self._wrap(relu(self.ctx, self.share)[0])

    def sigmoid(self) -> SharedTensor:
        return self._wrap(sigmoid(self.ctx, self.share))

    def exp(self) -> SharedTensor:
        return self._wrap(exp(self.ctx, self.share))

    def reciprocal(self, hi: float) -> SharedTensor:
        return self._wrap(reciprocal(self.ctx, self.share, hi))

    # -- reveal and misuse --------------------------------------------------------------------
    def reveal(self, what: str, name: str) -> torch.Tensor:
        """Open to every party in plaintext, if the reveal policy allows (what, "all")."""
        opened = protocols.reveal_to_all(self.ctx, self.share, what, name)
        return self.ctx.fxp.decode(opened)

    def __bool__(self) -> bool:
        raise TypeError(
            f"{self.ctx.name}: cannot branch on a secret SharedTensor of shape "
            f"{tuple(self.shape)}; compare it (x >= t) and use the shared bit arithmetically"
        )

    def __repr__(self) -> str:
        return f"SharedTensor(party={self.ctx.name}, shape={tuple(self.shape)})"
