"""The exact maximum of each row of a shared (B, K) tensor [DFKNT06, CrypTen21].

Bitwise comparisons and K <= ``ALL_PAIRS_MAX_COLUMNS`` (:func:`row_max`), 5 rounds for
K <= 11 (6 up to 16 columns):

1. Every pair i < j at once: XOR shares of b_ij = [x_i >= x_j] from one comparison of the
   K(K-1)/2 differences, stopped before its B2A round (``compare.greater_equal_bits``). 3 rounds
2. Element i is the first maximum iff it beats every other element, ties going to the lower
   index: ind_i = AND over j > i of b_ij, AND over j < i of NOT b_ji. The K - 1 factors of
   every element are gathered from the pairs' shares (a local permutation of XOR-shared bits)
   and multiplied in one round of multi-factor ANDs (``gf2.and_all``, fan-in 10). 1 round
3. B2A and the product with x in one round: with a dealer bit z (XOR and arithmetic shares)
   and a dealer mask a for x, open e = ind xor z and d = x - a together; then x = d + a,
   [ind] = e + (1 - 2e)[z] and [ind x] = e [x] + (1 - 2e)(d [z] + [z a]), local.
   The row's maximum is the sum of ind_i x_i over i.                                 1 round

With ``input_bits`` and n > 2 the truncation of x is fused into step 1's opening (the sign of
a floor is that of the difference) and into step 3's (d then comes from the truncation's
opening and its two masked candidates, as in ``arith.truncate_then_mul``): no extra round.

Cost per row, K = 10: 45 comparisons (the same thresholds' tree as any comparison: ~10 bits
+ 1 word per pair sent to each peer), then 9 words per 64 rows for the AND and 1 word + 1 bit
per element for step 3. The dealer sends party 0, beyond the comparisons' material, 2^9 - 10
= 502 bits per element for the AND (one word per mask product and 64 elements) and 2 words
per element (3 fused) for step 3. CrypTen's "pairwise" argmax takes the same O(K^2)
comparisons in constant rounds [CrypTen21]; its default, like SecureNN's max, is the
tournament, which this module keeps for wider rows and for FSS comparisons.

[DFKNT06] Damgard, Fitzi, Kiltz, Nielsen, Toft: Unconditionally secure constant-rounds
multi-party computation for equality, comparison, bits and exponentiation. TCC 2006.
[CrypTen21] Knott et al.: CrypTen: Secure multi-party computation meets machine learning.
NeurIPS 2021.
"""

from __future__ import annotations

import functools

import torch

from mpc.core.bits import packed_words, slice_bits, unslice_bits
from mpc.protocols import gf2
from mpc.protocols.arith import (
    TruncationMask,
    add_public,
    open_bits_and_masked,
    truncate,
)
from mpc.protocols.compare import greater_equal_bits, threshold_products
from mpc.protocols.context import PartyContext

__all__ = ["ALL_PAIRS_MAX_COLUMNS", "row_max"]

# Rows of at most this many columns take the all-pairs row max (one comparison of the K(K-1)/2
# differences); wider rows the tournament, whose comparisons grow linearly with K.
ALL_PAIRS_MAX_COLUMNS = 16

# A threshold below every value compared against it: [x' >= -FAR] x' = x' for |x'| < FAR
# (logits are bounded by 2^LOGIT_BITS = 128 in training), so a comparison's products return
# the truncated input itself.
_FAR = 4096.0


def row_max(ctx: PartyContext, x: torch.Tensor, *, input_bits: int = 0) -> torch.Tensor:
    """Shares of the maximum of each row of a (B, K) tensor, exactly one of the row's values.

    Bitwise comparisons and K <= ``ALL_PAIRS_MAX_COLUMNS``: all pairs, the AND of each
    element's wins, one product (module doc): 5 rounds for K <= 11, 6 for 12 <= K <= 16; the
    comparisons see the differences x_i - x_j (|.| < 2^14 in real terms, as the tournament's).

    FSS comparisons keep the tournament (:func:`_tournament_max`, one round per level): their
    cost is per compared element (~2 KB of dealer keys and ~1.5 us of evaluation each), and
    all pairs compare K (K + 1) / 2 elements per row against the tournament's K - 1 (6.1 times
    as many for K = 10) to save rounds (digits-softmax, 2 parties, loopback: 0.95 s/epoch with
    the tournament, 1.24-1.30 with an all-pairs form; 2.5 against 6.5 MB of dealer keys per
    step).

    ``input_bits``: x is at f + input_bits fractional bits (|x| < 2^12 in real terms) and is
    truncated at no extra round: 2 parties locally first; n > 2 inside the openings of steps
    1 and 3. The result is then the maximum of the truncated values (within 2 ulps in the
    tournament form)."""
    k = x.shape[1]
    if k > ALL_PAIRS_MAX_COLUMNS or ctx.comparison == "fss":
        return _tournament_max(ctx, x, input_bits=input_bits)
    fused = bool(input_bits) and not ctx.truncate_locally
    if input_bits and not fused:
        x = truncate(ctx, x, input_bits)
    if k == 1:
        return truncate(ctx, x[:, 0], input_bits) if fused else x[:, 0]
    first, second = _pairs(k)
    ge = greater_equal_bits(ctx, x[:, first] - x[:, second], [0.0],
                            truncate_bits=input_bits if fused else 0)
    factors = _win_factors(ctx, ge, x.shape[0], k)
    ind = gf2.and_all(ctx, list(factors.unbind(0)), "rowmax")
    return _select(ctx, ind, x, input_bits if fused else 0).sum(1)


@functools.lru_cache(maxsize=32)
def _pairs(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Column indices (i, j) of every pair i < j of k columns."""
    first, second = torch.triu_indices(k, k, 1)
    return first.contiguous(), second.contiguous()


@functools.lru_cache(maxsize=32)
def _opponents(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For element i and its m-th opponent j (the others in order): the index of the pair
    {i, j} among :func:`_pairs` and whether i's factor is the pair's bit negated (j < i),
    each of shape (k - 1, k)."""
    first, second = _pairs(k)
    index = {(int(i), int(j)): p for p, (i, j) in enumerate(zip(first, second, strict=True))}
    pair = torch.empty((k - 1, k), dtype=torch.int64)
    negate = torch.empty((k - 1, k), dtype=torch.int64)
    for i in range(k):
        for m, j in enumerate(j for j in range(k) if j != i):
            pair[m, i] = index[(min(i, j), max(i, j))]
            negate[m, i] = int(j < i)
    return pair, negate


def _win_factors(ctx: PartyContext, ge: torch.Tensor, rows: int, k: int) -> torch.Tensor:
    """XOR shares of the K - 1 factors of every element (row-major over (B, K)), sliced:
    shape (K - 1, W) with W = packed_words(B K). Local: a permutation of shared bits, and
    party 0 negates the factors of earlier opponents (x_i > x_j is NOT x_j >= x_i)."""
    pairs = k * (k - 1) // 2
    bits = unslice_bits(ge.reshape(1, -1), rows * pairs).reshape(rows, pairs)
    pair, negate = _opponents(k)
    factors = bits[:, pair]  # (B, K - 1, K)
    if ctx.pid == 0:
        factors = factors ^ negate
    flat = factors.permute(1, 0, 2).reshape(k - 1, rows * k)
    return slice_bits(flat, 0, 1).reshape(k - 1, packed_words(rows * k))


def _select(ctx: PartyContext, ind: torch.Tensor, x: torch.Tensor, input_bits: int
            ) -> torch.Tensor:
    """Shares of ind * x' (x' = x / 2^input_bits) for XOR-shared sliced indicator bits ind
    over x's elements: B2A and the product in one round (step 3 of the module doc)."""
    pre = ctx.pre
    shape = tuple(x.shape)
    n = x.numel()
    z = pre.random_bits((packed_words(n),))

    @functools.cache
    def z01() -> torch.Tensor:  # the dealer's bits of z as 0/1 of x's shape
        return unslice_bits(z.reshape(1, -1), n).reshape(shape)

    z_arith = pre.correlated("rowmax/b2a", shape, z01)
    if input_bits:  # n > 2: x' = d + a_w from the truncation's opening (arith.truncate_then_mul)
        mask = TruncationMask.draw(ctx, shape, input_bits)
        a0, a1 = pre.random(shape), pre.random(shape)
        za0 = pre.correlated("rowmax/za", shape, lambda: z01() * a0)
        za1 = pre.correlated("rowmax/za", shape, lambda: z01() * a1)
        masked = [mask.masked(ctx, x), *mask.candidates(a0, a1)]
    else:
        a = pre.random(shape)
        za = pre.correlated("rowmax/za", shape, lambda: z01() * a)
        masked = [x - a]
    if ctx.dry:
        return torch.zeros(shape, dtype=torch.int64)
    (opened,), ring_values = open_bits_and_masked(ctx, "rowmax", [ind ^ z], masked)
    e = unslice_bits(opened.reshape(1, -1), n).reshape(shape)
    if input_bits:
        c, w0, w1 = ring_values
        gate, d = mask.operand(c, w0, w1, 0)
        x = add_public(ctx, torch.where(gate, a1, a0), d)
        za = torch.where(gate, za1, za0)
    else:
        (d,) = ring_values
    return e * x + (1 - 2 * e) * (d * z_arith + za)


def _tournament_max(ctx: PartyContext, x: torch.Tensor, *, input_bits: int = 0) -> torch.Tensor:
    """The row max by a tournament: one comparison round set per level (max(a, b) =
    b + [a >= b] (a - b), the product from the same round).

    ``input_bits``: the first level's comparison truncates x in its opening (no extra round for
    n > 2): it takes a - b and b (and an odd last column) with the thresholds 0 and -4096,
    whose products are [a - b >= 0] (a - b)' and b' itself. The result is then within 2 ulps
    of the maximum of the truncated values (the difference is truncated apart from b)."""
    if input_bits:
        a, b, rest = _halves(x)
        half = a.shape[1]
        _, prod = threshold_products(ctx, torch.cat([a - b, b, rest], dim=1), [0.0, -_FAR],
                                     truncate_bits=input_bits)
        x = torch.cat([prod[1][:, half : 2 * half] + prod[0][:, :half], prod[1][:, 2 * half :]],
                      dim=1)
    while x.shape[1] > 1:
        a, b, rest = _halves(x)
        _, prod = threshold_products(ctx, a - b, [0.0])
        x = torch.cat([b + prod[0], rest], dim=1)  # b + [a >= b] (a - b) = max(a, b)
    return x[:, 0]


def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A tournament level's pairs: the first and second halves of the columns, and the odd
    last column (or none)."""
    half = x.shape[1] // 2
    return x[:, :half], x[:, half : 2 * half], x[:, 2 * half :]
