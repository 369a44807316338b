"""n > 2 parties: a step's weight update is settled in the next step's first round.

An SGD step of logistic or linear regression for n > 2 (``training._folded_update``) ends
with one exact dealer truncation of the update x = factor * X_B^T r (3f + extra fractional
bits) by b = 2f + extra (``protocols.truncate``): open c = x + 2^62 + r' (r' uniform), then
x >> b = P - H + g W with public P = (c >> b) - 2^(62 - b) and gate g = [c < 2^63], both known
only once c is open, and shares of H = r' >> b and W = 2^(64 - b) msb(r') from the dealer.
The next step's first round opens w' - v for its product X_B' w' with the data mask
(``training._masked_product``, [SecureML17 §IV-A]). Here the two openings share that round:

* open c and f = w + H - v together (v fresh and uniform, so f is uniform; c as before);
* w' = w - (x >> b) = w + H - g W - P: local once g and P are public;
* X_B' w' = E_B' w' + A_B' (w + H) - A_B' (g * W) - A_B' P, where
  A_B' (w + H) = A_B' f + [A_B' v] (the triple's z, as in the unfused product) and
  A_B' (g * W) = M g for the dealer's M = A_B' diag(W) (shares, B x d per output): local.

Why M and not the two candidate masks of ``TruncationMask.candidates``: g is chosen per
weight, and a matrix product mixes the weights, so a triple for either mask cannot serve a
mixed choice, while M g can.

Cost against the unfused step: one round fewer (logistic 7 -> 6 with the bitwise comparison,
4 -> 3 with FSS; linear 4 -> 3), except for each epoch's last step, whose update is settled
by its own round (``settle``) before the epoch's range check reads the weights; the shared
opening sends 2d words to each peer instead of d; the dealer sends party 0 B * d more words
per step (M; the other parties expand their shares from their seeds). So a step fuses only
while B * d * k <= ``FUSE_WORDS`` (512 KiB of M, public sizes; e.g. d <= 512 at B = 128):
a wider model settles each update on its own (7 rounds), where M's traffic would outweigh a
round trip. What is opened is uniformly masked as before; the range check sees the same values
(``_folded_update`` records x against 2^61 before its truncation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mpc.core import ring
from mpc.learn.masked import MaskedData
from mpc.protocols.arith import TruncationMask, add_public, open_masked
from mpc.protocols.context import PartyContext

__all__ = ["FUSE_WORDS", "PendingUpdate", "fuses", "fused_product", "settle"]

FUSE_WORDS = 1 << 16  # the most words of M per step (B * d * k) for which a step fuses


def fuses(rows: int, w: torch.Tensor) -> bool:
    """Whether a batch of ``rows`` settles the pending update in its product's round."""
    return rows * w.numel() <= FUSE_WORDS


@dataclass
class PendingUpdate:
    """A step's update w - (x >> bits) whose truncation is not opened yet: the mask and this
    party's share of c = x + 2^62 + r (uniform)."""

    mask: TruncationMask
    share: torch.Tensor

    @classmethod
    def of(cls, ctx: PartyContext, x: torch.Tensor, bits: int) -> PendingUpdate:
        """Draw the truncation material for x >> bits (no round)."""
        mask = TruncationMask.draw(ctx, tuple(x.shape), bits)
        return cls(mask, torch.zeros_like(x) if ctx.dry else mask.masked(ctx, x))


def settle(ctx: PartyContext, w: torch.Tensor, pending: PendingUpdate) -> torch.Tensor:
    """w - (x >> bits) on its own: 1 round, d words to each peer (``protocols.truncate``)."""
    if ctx.dry:
        return w
    (c,) = open_masked(ctx, "trunc", [pending.share])
    return w - pending.mask.result(ctx, c)


def fused_product(
    ctx: PartyContext, data: MaskedData, rows: torch.Tensor, w: torch.Tensor,
    pending: PendingUpdate,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(w', X_B w') for w' = w - (x >> bits) of ``pending``, X_B w' at 2f fractional bits
    (untruncated): 1 round, 2d words to each peer per output; dealer: the triple's B words and
    M's B * d per output to party 0."""
    mask = pending.mask
    E_b, A_b = data.rows(rows)
    shape = tuple(w.shape)  # (d, k)
    v = ctx.pre.random(shape)
    z = ctx.pre.correlated("triple/data", (E_b.shape[0], shape[1]),
                           lambda: ring.matmul(A_b, v))
    m = ctx.pre.correlated("triple/wrap", (shape[1], E_b.shape[0], shape[0]),
                           lambda: A_b.unsqueeze(0) * mask.wrap().T.unsqueeze(1))
    if ctx.dry:
        return w, torch.zeros_like(z)
    base = w + mask.high
    c, f = open_masked(ctx, "update+data", [pending.share, base - v])
    gate, public = mask.opened(c)
    g = gate.to(torch.int64)
    w_new = add_public(ctx, base - g * mask.wrap(), -public)
    wrapped = (m * g.T.unsqueeze(1)).sum(-1).T  # M g, (B, k)
    out = ring.matmul(E_b, w_new) + ring.matmul(A_b, f - public) + z - wrapped
    return w_new, out
