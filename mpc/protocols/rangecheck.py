"""Secure range checks of shared values, batched over an epoch or more [SecureML17, DFKNT06].

Why. Two things can corrupt a secure training run without any party noticing:

* the 2-party local truncation [SecureML17] (``protocols.truncate``) fails with probability
  about |x| / 2^63 per element: the result is off by +-2^(64 - k) for a truncation by k bits
  (+-2^48 ring units, 2^32 in real terms, for k = f = 16);
* a protocol whose input leaves its domain returns garbage: a comparison needs |x - t| < 2^30
  ring units (``compare``), the exact truncation |x| < 2^62 (``TRUNC_BOUND_BITS``), ``exp``
  needs x >= -256.

Training records the values that must lie in a public range (:class:`RangeGuard`) and checks
them together at epoch ends (``training.train``: the last epoch, every epoch followed by a
reveal such as the secure loss, and every epoch that leaves ``CHECK_CHUNK`` level inputs
pending, so a small dataset's epochs share one check); one failed check ends the run with
:class:`~mpc.core.errors.NumericError`. Recorded by ``training.py`` during the epoch:

* every comparison input, against its domain: logistic / ReLU / linear activations
  |u| < 2^13 (the comparison needs |u - t| < 2^14 for knots |t| <= 8), softmax logits
  |u| < 2^7 (so logit - row max > -256, where ``exp``'s (1 + x/256)^256 is monotone);
* every 2-party local truncation by k bits whose value is used (activations, sigmoid and
  softmax outputs, back-propagated errors), against 2^(63-k) or tighter: a wrap adds
  2^(64-k), at least twice that bound away from any true value below 2^62 (the same record
  catches an exact truncation, n > 2, whose input left 2^62: its result is then off by a
  multiple of 2^(64-k) too). Gradient and
  update wraps stay in the weights, whose check sees them (``_sgd_update``; recorded
  themselves only for lr / B < 2^-17, where they could hide below the weights' bound);
* every input of an exact dealer truncation of the update (n > 2), against 2^61 (it needs
  2^62); weights, |w| < 2^13, at the end of the epoch.

What follows from the checks passing, by argument rather than by a check: sigmoid and softmax
outputs lie in [-0.01, 1.01] (piecewise chords, ``exp`` of a non-positive input, a reciprocal
of a sum in [1, K]), so |p - y| <= 1.01 for the classifiers; ``reciprocal``'s input is in
[1, K]; the exact truncations inside softmax (n > 2) see values below 2^(2f + 7). So the
sigmoid's and softmax's outputs are recorded only as the local truncations they are (2^(63-f),
one level): a wrap of a local truncation inside softmax (exp's, 1/x's; each ~2^-30 likely at
these magnitudes) makes its output a value that passes 2^47 only by chance (~2^-17). Residual
caveat, stated plainly: a ring product whose true value exceeds 2^63 (e.g. an activation
beyond 2^31, far past its bound 2^13; features are bounded at load by |x| < 2^31,
``fixedpoint``) wraps before it is checked, and passes only if it lands inside the bound by
chance (~2^-18 per value), while the weights that caused it are checked too.

Check of |x| < 2^b for x anywhere in Z_2^64 (b in [14, 47] ring units). The comparison of
``compare.compare_thresholds`` looks at 31 bits: it returns bit 30 of (x' - t) mod 2^31, the
sign of x' - t when |x' - t| < 2^30. Let x' = x >> 33 by the *exact* dealer truncation fused
into the comparison's opening (``exact_truncation=True``, for any n, no extra round). For
|x| < 2^62 it is exact; otherwise the truncation is off by a multiple of 2^(64 - 33) = 2^31,
invisible modulo 2^31, and x' mod 2^31 lies in [2^29, 3 * 2^29): as a 31-bit signed number
|x'| >= 2^29 - 1. So the first level, [-2^14 <= x >> 33 < 2^14], is sound for *every* x and
decides |x| < 2^47. Each further level checks floor(x / 2^s) against +-2^14 for a smaller s,
by feeding x * 2^(33 - s) to the same truncation by 33 (no wrap, given the previous level);
it is sound once the previous one passed (|x >> s| < 2^29) and decides |x| < 2^(14 + s).
Levels run side by side in one comparison (a failed level makes the count below non-zero, so
what later levels return then does not matter): 1 level for b = 47, 2 for b in [33, 47),
3 for b in [19, 33), 4 below. The edges are exact up to the truncation's carry: a value passes when
|x| < 2^b - 2^(s+1) and fails when |x| >= 2^b + 2^s (s the last level's shift).
:meth:`RangeGuard.record_wide` checks |x| < 2^61 in one level with thresholds +-2^28.

Aggregate. Each element and level gives shares of two bits; 1 - [x' >= -t] + [x' >= t] >= 0
is 0 exactly when it passed, so their sum (local) is 0 iff all passed. The count is tested
for zero by the same check (count * 2^16 against 2^14, 4 levels, then one comparison of the
at most 8 flags with 1), and only the resulting bit is opened to every party: "the values
recorded since the last check stayed in range". This is a protocol-internal opening of one
non-sensitive bit (like the abort bit of a maliciously secure protocol): it is not a reveal
of data under the reveal policy, and it is never opened except as that bit; a failure aborts
the run (the only thing that bit decides), so no further information follows from it.

Cost of :meth:`RangeGuard.check`, per check: 4 rounds (+4 with wide values, n > 2 training)
for the batched comparison (per ``CHECK_CHUNK`` level inputs: an epoch of millions of rows
takes several comparison calls, to bound memory), 8 for the zero test, 1 to open the bit: 13
(2 parties) or 17.
Per element and level, ~92 bits to each peer (one word for the opening plus 2 x 10 + 7 bits
of the comparison tree, see ``compare``); the dealer sends party 0 ~490 bits (2 words per
threshold + 1 for the truncation + 121 bits of mask monomials). Preprocessing: the
comparison's (``compare``, ``gf2``), requested in the same order by the dealer's dry run,
which runs this same code with ``ctx.dry``.

What this does not do: check anything between epoch ends (a wrong value is caught at the end
of its epoch or of a later one, always before any reveal: of the model, or of a loss), or
protect against malicious parties.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from mpc.core.errors import NumericError, ProtocolError
from mpc.protocols.arith import add_public
from mpc.protocols.compare import COMPARE_BITS, SHARED_LOW_BITS, compare_thresholds
from mpc.protocols.context import PartyContext

__all__ = ["MAX_BOUND_BITS", "WIDE_BOUND_BITS", "CHECK_CHUNK", "levels", "count_outside",
           "RangeGuard"]

log = logging.getLogger(__name__)

_SHIFT = 64 - COMPARE_BITS - 1  # 33: the truncation after which a wrap is invisible mod 2^31
_NARROW = SHARED_LOW_BITS  # thresholds +-2^14 ring units, the smallest compare allows
_WIDE = 28  # thresholds +-2^28 ring units, for the one-level |x| < 2^61 check
MAX_BOUND_BITS = _SHIFT + _NARROW  # 47: the first level's bound
WIDE_BOUND_BITS = _SHIFT + _WIDE  # 61
_MARGIN = COMPARE_BITS - 2  # a level's |x >> s| stays below 2^28 (plus the carry)
# Level inputs per comparison call of a check: bounds its memory (~300 bytes per input) when
# an epoch records millions of values (out-of-core data); smaller epochs take one call, and
# training checks at the end of an epoch once this many are pending (fewer: a later epoch's
# check takes them too).
CHECK_CHUNK = 1 << 18
_ZERO = torch.zeros(1, dtype=torch.int64)  # the dry run's records: views of one zero


def levels(bound_bits: int) -> list[int]:
    """Truncation shifts s of the levels checking |x| < 2^bound_bits (see module doc)."""
    if not _NARROW <= bound_bits <= MAX_BOUND_BITS:
        raise ValueError(f"range check: bound 2^{bound_bits} outside [2^14, 2^47] ring units")
    shifts, known = [_SHIFT], MAX_BOUND_BITS
    while known > bound_bits:
        shift = max(bound_bits - _NARROW, known - _MARGIN)
        shifts.append(shift)
        known = _NARROW + shift
    return shifts


def _level_inputs(parts: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """Every part, once per level, scaled so that truncation by 33 yields x >> s."""
    chunks = [
        x.reshape(-1) * (1 << (_SHIFT - shift)) for x, bits in parts for shift in levels(bits)
    ]
    return torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.int64)


def _outside(ctx: PartyContext, values: torch.Tensor, threshold_bits: int) -> torch.Tensor:
    """Shares (shape (1,)) of the number of failed (element, threshold) tests: 4 rounds."""
    t = 2.0 ** (threshold_bits - ctx.fxp.frac_bits)
    bits, _ = compare_thresholds(
        ctx, values, [-t, t], with_products=False, truncate_bits=_SHIFT, exact_truncation=True
    )
    # 1 - [v >= -t] + [v >= t] is 0 inside, 1 outside (2 in a wrapped corner): never negative.
    return add_public(ctx, (bits[1] - bits[0]).sum().reshape(1), values.numel())


def count_outside(
    ctx: PartyContext, parts: list[tuple[torch.Tensor, int]], wide: list[torch.Tensor]
) -> torch.Tensor:
    """Shares (shape (1,)) of a count that is 0 iff every x in ``parts`` has |x| < 2^bits and
    every x in ``wide`` has |x| < 2^61 (ring units): 4 rounds, +4 if ``wide`` is not empty.

    Always the bitwise comparison, whatever ``ctx.comparison``: an epoch's records are many
    values (every level of every recorded element), and an FSS key per value would cost the
    dealer ~1.2 KB each against ~60 B; these rounds are paid once per check.
    """
    ctx = replace(ctx, comparison="bitwise")
    count = torch.zeros(1, dtype=torch.int64)
    if ctx.dry:  # the dealer's dry run: only the sizes matter (its records hold no values)
        narrow_values = torch.zeros(sum(x.numel() * len(levels(b)) for x, b in parts),
                                    dtype=torch.int64)
    else:
        narrow_values = _level_inputs(parts)
    if narrow_values.numel():
        count = count + _outside(ctx, narrow_values, _NARROW)
    if wide:
        wide_values = (torch.zeros(sum(x.numel() for x in wide), dtype=torch.int64) if ctx.dry
                       else torch.cat([x.reshape(-1) for x in wide]))
        count = count + _outside(ctx, wide_values, _WIDE)
    return count


def _is_zero(ctx: PartyContext, count: torch.Tensor, name: str) -> bool:
    """Open only [count == 0] for a shared count in [0, 2^40): 9 rounds."""
    # count * 2^16 is 0 or >= 2^16 (no wrap for count < 2^47): the 4-level check against 2^14.
    flags = _outside(ctx, _level_inputs([(count * (1 << 16), _NARROW)]), _NARROW)
    # flags in [0, 8]: one comparison without truncation, [flags >= 1].
    one = 2.0 ** (_NARROW - ctx.fxp.frac_bits)
    bad, _ = compare_thresholds(ctx, flags * (1 << _NARROW), [one], with_products=False)
    got = ctx.channel.all_to_all("rangecheck/" + name, [bad[0]])
    total = bad[0].clone()
    for (share,) in got.values():
        total += share
    return ctx.dry or int(total.item()) == 0  # the dry run opens zeros: nothing to decide


def _chunks(parts: list[tuple[torch.Tensor, int]], wide: list[torch.Tensor], limit: int
            ) -> list[tuple[list[tuple[torch.Tensor, int]], list[torch.Tensor]]]:
    """The recorded values in groups of at most ``limit`` level inputs (one group, as they
    are, when they fit): each group costs one :func:`count_outside` (4 rounds, +4 wide)."""
    total = sum(x.numel() * len(levels(b)) for x, b in parts) + sum(x.numel() for x in wide)
    if total <= limit:
        return [(parts, wide)]
    groups: list[tuple[list[tuple[torch.Tensor, int]], list[torch.Tensor]]] = []
    group: list[tuple[torch.Tensor, int]] = []
    size = 0
    for x, bits in parts:
        per = len(levels(bits))
        step = max(1, limit // per)
        for lo in range(0, x.numel(), step):
            piece = x[lo : lo + step]
            if size + piece.numel() * per > limit and group:
                groups.append((group, []))
                group, size = [], 0
            group.append((piece, bits))
            size += piece.numel() * per
    if group:
        groups.append((group, []))
    flat = torch.cat([x.reshape(-1) for x in wide]) if wide else torch.zeros(0, dtype=torch.int64)
    for lo in range(0, flat.numel(), limit):
        groups.append(([], [flat[lo : lo + limit]]))
    return groups


class RangeGuard:
    """Shared values recorded with public bounds, checked together by :meth:`check`.

    ``record(x, bits)``: |x| < 2^bits ring units, 14 <= bits <= 47. ``record_truncated(y, k)``:
    y is a local truncation by k bits of a value below 2^62, so |y| <= 2^(62-k) + 1, while a
    wrap adds +-2^(64-k): the bound 2^(63-k) separates the two. ``record_wide(x)``: |x| < 2^61.
    ``dry``: the dealer's dry run, whose values are placeholders: only their sizes are kept
    (as zero-stride views, no copy), which is all its check needs to request the material.
    """

    def __init__(self, dry: bool = False) -> None:
        self._parts: list[tuple[torch.Tensor, int]] = []
        self._wide: list[torch.Tensor] = []
        self._dry = dry
        self.checks = 0  # checks passed (one opened bit each)

    def _kept(self, x: torch.Tensor) -> torch.Tensor:
        if self._dry:
            return _ZERO.expand(x.numel())
        return x.detach().reshape(-1).clone()

    def record(self, x: torch.Tensor, bound_bits: int) -> None:
        levels(bound_bits)  # validates the bound
        self._parts.append((self._kept(x), bound_bits))

    def record_truncated(self, y: torch.Tensor, bits: int) -> None:
        self.record(y, min(MAX_BOUND_BITS, 63 - bits))

    def record_wide(self, x: torch.Tensor) -> None:
        self._wide.append(self._kept(x))

    @property
    def pending(self) -> int:
        """Elements (times levels) waiting for the next check."""
        narrow = sum(x.numel() * len(levels(b)) for x, b in self._parts)
        return narrow + sum(x.numel() for x in self._wide)

    def check(self, ctx: PartyContext, name: str, failure: str | None = None) -> None:
        """Check everything recorded since the last check; raise NumericError if anything was
        outside its bound: 13 rounds (17 with wide values), one bit opened. ``failure``: what
        the values are and what a failure means (default: the training's values)."""
        if self._dry and not ctx.dry:  # its records are placeholders: it would pass anything
            raise ProtocolError(f"{ctx.name}: {name}: a dry-run range guard checked by a party")
        parts, wide = self._parts, self._wide
        self._parts, self._wide = [], []
        if not parts and not wide:
            return
        elements = sum(x.numel() for x, _ in parts) + sum(x.numel() for x in wide)
        count = torch.zeros(1, dtype=torch.int64)
        for chunk_parts, chunk_wide in _chunks(parts, wide, CHECK_CHUNK):
            count = count + count_outside(ctx, chunk_parts, chunk_wide)
        if not _is_zero(ctx, count, "check"):
            raise NumericError(
                f"{ctx.name}: {name}: the secure range check of {elements} "
                + (failure or "training values failed: a value left its protocol's domain "
                   "(activation, weight or gradient too large) or a local truncation wrapped; "
                   "the model is discarded")
            )
        self.checks += 1
        if not ctx.dry:
            log.info("%s: secure range check of %d values passed (1 bit opened)", name, elements)
