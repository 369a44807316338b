"""Comparison with public thresholds in one round, from function secret sharing [BGI19].

The FSS backend of ``compare.compare_thresholds`` (selected by ``ctx.comparison == "fss"``):
the same inputs, and the same outputs bit for bit, namely shares of b_k = [x' >= t_k] and of
b_k * x' for K public thresholds, where b_k is "bit 30 of (x' - t_k) mod 2^31 is 0" for ANY x'
(the sign of x' - t_k whenever |x' - t_k| < 2^30; ``rangecheck`` relies on the rule outside).

Protocol, with N = 2^31, H = 2^30:

1. Open c = x' + r, r a uniform dealer mask (every party sends its share: 1 round, the only
   one). With a fused truncation (n > 2, or ``exact_truncation``) the opening is the
   truncation's own (``arith.TruncationMask``): x' = P - R for public P and
   R = (r >> f) - w 2^(64 - f) r_63, so R = r >> f modulo 2^31 and P plays the part of c.
2. Let alpha = R mod N, a = bit 30 of alpha, c_k = c - t_k (public). Then bit 30 of
   (x' - t_k) mod N = (c_k - alpha) mod N is  c_k[30] xor a xor borrow_k,  with the borrow out
   of the low 30 bits borrow_k = [c_k mod H < alpha mod H]. The dealer gives parties 0 and 1 a
   DCF key pair (``mpc.core.dcf``) for f(z) = beta [z < alpha mod H] on Z_{2^30} with payload
   beta = (1 - 2a) (1, v_1, .., v_T) (v_j the mask terms of R), and every party additive
   shares of a (1, v_1, .., v_T). Then s_k = a xor borrow_k = a + (1 - 2a) borrow_k and
   s_k v_j are [a (1, v)] + Eval(c_k mod H): K evaluations per element under one key, no
   round. b_k = 1 - (c_k[30] xor s_k) is s_k where c_k[30] = 1 and 1 - s_k elsewhere (party 0
   adds the 1), likewise b_k v_j = s_k v_j or v_j - s_k v_j.
3. Products, exact in Z_2^64: x' = c - sum_j coeff_j v_j (coeff 1, or the public wrap term),
   so b_k x' = c [b_k] - sum_j coeff_j [b_k v_j]. Local.

Only parties 0 and 1 hold keys and evaluate; parties >= 2 take zero shares of the DCF outputs
(their shares of a (1, v) and of v still count). The keys' correction words are requested
after the opening, in chunks of about 2^13 evaluations (the same split on every side, from
public sizes), so Gen and Eval memory stays bounded for large batches (the range check's).

Cost, per compared element (K thresholds, L = 1 + T payload words: L = 1 without products,
2 with products, 3 with products and a fused truncation):

* rounds: 1 for every n and K (``relu`` 1, ``piecewise``/sigmoid 1 + its final truncation:
  1 for n = 2, 2 for n > 2; ``row_max`` 1 per tournament level: with FSS it keeps the
  tournament, as all pairs would compare K (K + 1) / (2 (K - 1)) times the elements). The
  bitwise backend: 4.
* bytes each party sends: one word to each peer (the opening), (n - 1) * 8.
* dealer: DCF correction words to party 0 and to party 1, 30 (16 + 8L) + 8 + 8L bytes each
  (736 / 984 / 1232 for L = 1 / 2 / 3), plus L words of shares of a (1, v) to party 0 (seed
  compression); the root seeds come from the parties' own dealer streams (no traffic):
  1480 / 1984 / 2488 bytes per element (+16 for a fused truncation's own pair), independent
  of K. The bitwise backend's dealer sends 121 bits + K (2 words + 23 bits) per element
  (~320 bytes for the sigmoid's 16 knots, ~37 for ReLU).
* compute: Gen 4 * 30 (1 + V) + 2V AES blocks per element at the dealer (V = ceil(L / 2)),
  Eval 30 (1 + V) + V per element and threshold at parties 0 and 1.

Measured, 2 parties, one thread per process, on a 2-core AMD EPYC shared with other jobs
(load 4-8; ``python bench/fss_bench.py``, best CPU time, ranges over runs): sigmoid
(16 knots, 16 evaluations per element) at B = 128: Eval 1.9-3.4 ms at party 0, Gen 2.2-4.1 ms
at the dealer, 1 round, 1048 bytes sent per party, 254 KB from the dealer (bitwise: 4 rounds,
3.8 KB per party, 41 KB from the dealer); at B = 1024: Eval 12-18 ms, Gen 5-11 ms, 2.0 MB
from the dealer; ReLU on 32 x 32: Eval 1.9-3.5 ms, Gen 4.4-9.7 ms, 1 round, 8.2 KB per party
(bitwise: 4 rounds, 10.5 KB). Over real processes and mutual TLS on loopback
(``bench/ops_tls.py`` with the contexts set to "fss", offline dealer, slowest party, median
of 10, two runs): 2 parties, sigmoid B = 128 6-9 ms (bitwise 4-23 ms, the round cost on this
loaded loopback varies), B = 1024 35-50 ms (bitwise 7-25 ms), ReLU 1024 8-10 ms (bitwise
5-25 ms); 3 parties, sigmoid B = 128 8.9 ms (bitwise 25 ms), ReLU 1024 9.3 ms (bitwise 20 ms).
FSS trades rounds for compute (~1.2-1.7 us of CPU per evaluation at each key holder) and
dealer bytes (~2 KB per element): it wins whenever the 3 rounds it saves cost more than that,
i.e. on any real network (a 1 ms round trip already pays for 2000 evaluations); on loopback it
depends on the load.

Security. Semi-honest, dealer not colluding with any party. Each key alone is pseudorandom
and c is uniformly masked, so a party's view is simulatable. But the two keys together reveal
alpha and beta, i.e. R, hence x' = c - R: parties 0 and 1 must not collude. For n = 2 that
changes nothing (together they hold x' anyway); for n > 2 it weakens the (n - 1)-collusion
tolerance of the dealer model to "parties 0 and 1 do not collude", which is why the default
("auto", chosen by the coordinator) uses this backend for n = 2 only and "fss" opts in for
n > 2.

Not here: malicious security, interval containment for general splines with one key per
interval [BGI19 Sec. 4], and FSS for anything but comparisons with public thresholds.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from mpc.core import dcf
from mpc.core.fixedpoint import FixedPoint
from mpc.protocols.arith import TruncationMask, open_masked, truncate
from mpc.protocols.context import PartyContext

__all__ = ["SIGN_BIT", "DOMAIN_BITS", "compare_thresholds_fss", "dealer_bytes_per_element"]

SIGN_BIT = 30  # bit compared: bit 30 of (x' - t) mod 2^31, as ``compare.COMPARE_BITS``
DOMAIN_BITS = SIGN_BIT  # the DCF compares the low 30 bits (the borrow into bit 30)
_LOW = (1 << DOMAIN_BITS) - 1
_KEY_HOLDERS = (0, 1)
_CHUNK_POINTS = 1 << 13  # DCF evaluations per chunk of keys: bounded memory, cache-sized


def dealer_bytes_per_element(payload: int, fused_truncation: bool = False) -> int:
    """Dealer bytes per compared element: two keys' correction words, the shares of
    a (1, v) to party 0, and a fused truncation's own pair (r >> f, r_63)."""
    key = 8 * dcf.key_words(DOMAIN_BITS, payload)
    return 2 * key + 8 * payload + (16 if fused_truncation else 0)


def compare_thresholds_fss(
    ctx: PartyContext,
    x: torch.Tensor,
    thresholds: Sequence[float],
    *,
    with_products: bool = True,
    truncate_bits: int = 0,
    exact_truncation: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shares of b_k = [x' >= t_k] (shape (K, *x.shape), 0/1) and of b_k * x' from DCF keys:
    1 round for any n (see module doc); x' = x / 2^truncate_bits.

    The semantics of ``compare.compare_thresholds``: bit 30 of (x' - t_k) mod 2^31, for any x'.
    n = 2 with ``truncate_bits``: local truncation first; n > 2 or ``exact_truncation``: the
    exact truncation's opening is the masked value (no extra round). Any thresholds (no
    multiple-of-2^14 restriction). Dealer material: :func:`dealer_bytes_per_element`.
    """
    pre = ctx.pre
    shape = tuple(x.shape)
    m = x.numel()
    t = _encoded(ctx.fxp, tuple(thresholds))
    k = int(t.shape[0])
    fused = bool(truncate_bits) and (exact_truncation or not ctx.truncate_locally)
    if fused:
        if truncate_bits + SIGN_BIT + 1 > 64:
            raise ValueError(
                f"compare_thresholds: cannot fuse a truncation by {truncate_bits} bits"
            )
        mask = TruncationMask.draw(ctx, shape, truncate_bits)
        masks = [mask.high, mask.msb]
    else:
        if truncate_bits:
            x = truncate(ctx, x, truncate_bits)  # local for n = 2
        r = pre.random(shape)
        masks = [r]
    terms = masks if with_products else []
    payload = 1 + len(terms)
    offsets, seeds = _material(ctx, m, masks[0], terms)
    chunks = _chunks(m, k)
    if ctx.dry:  # the dealer's dry run: it only generates and sends the material
        for span in chunks:
            _keys(ctx, span, masks[0], terms, seeds)
        out = torch.zeros((k,) + shape, dtype=torch.int64)
        return out, (out if with_products else None)
    if fused:
        (opened,) = open_masked(ctx, "trunc+cmp", [mask.masked(ctx, x)])
        gate, c = mask.opened(opened)
        wrap = -gate.to(torch.int64) * (1 << (64 - truncate_bits))
        coeffs: list[torch.Tensor | None] = [None, wrap]
    else:
        (c,) = open_masked(ctx, "cmp", [x + r])
        coeffs = [None]
    c = c.reshape(1, m)
    c_k = c - t.reshape(k, 1)  # (K, m), public
    top = ((c_k >> SIGN_BIT) & 1).bool()
    points = c_k & _LOW
    s = offsets.unsqueeze(1).expand(-1, k, -1).contiguous()  # (L, K, m); parties >= 2: zero
    # DCF shares
    seed = seeds[ctx.pid] if ctx.pid in _KEY_HOLDERS else None
    for lo, hi in chunks:  # keys are read after the opening, a chunk at a time
        words = _keys(ctx, (lo, hi), masks[0], terms, seeds)
        if seed is not None and words is not None:
            key = dcf.DCFKey.from_words(words, DOMAIN_BITS, payload)
            got = dcf.evaluate(ctx.pid, seed[lo:hi], key, points[:, lo:hi].contiguous(),
                               payload_first=True)  # (L, K, hi - lo)
            s[:, :, lo:hi] += got
    one = 1 if ctx.pid == 0 else 0
    bits = torch.where(top, s[0], one - s[0])
    if not with_products:
        return bits.reshape((k,) + shape), None
    products = c * bits
    for j, (v, coeff) in enumerate(zip(terms, coeffs, strict=True)):
        bv = torch.where(top, s[1 + j], v.reshape(1, m) - s[1 + j])
        products -= bv if coeff is None else coeff.reshape(1, m) * bv
    return bits.reshape((k,) + shape), products.reshape((k,) + shape)


@functools.lru_cache(maxsize=256)
def _encoded(fxp: FixedPoint, thresholds: tuple[float, ...]) -> torch.Tensor:
    return fxp.encode(list(thresholds), what="thresholds").reshape(-1)


def _chunks(m: int, k: int) -> list[tuple[int, int]]:
    """Element ranges whose keys are generated, sent and evaluated together: about
    ``_CHUNK_POINTS`` evaluations each, so that memory stays bounded for large batches (the
    range check's); the same split on both sides, from public sizes."""
    size = max(1, _CHUNK_POINTS // max(k, 1))
    return [(lo, min(m, lo + size)) for lo in range(0, m, size)]


def _material(
    ctx: PartyContext, m: int, alpha_mask: torch.Tensor, terms: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """This party's shares of a (1, v_1, .., v_T) (shape (L, m)), and the root seeds (m, 2) of
    parties 0 and 1 as far as this party holds them (its own; the dealer: both)."""
    pre = ctx.pre

    def offsets() -> torch.Tensor:
        a = (alpha_mask.reshape(-1) >> SIGN_BIT) & 1
        return torch.stack([a] + [a * v.reshape(-1) for v in terms])

    shares = pre.correlated("fss/msb", (1 + len(terms), m), offsets)
    return shares, [pre.party_seed_words(p, (m, dcf.SEED_WORDS)) for p in _KEY_HOLDERS]


def _keys(
    ctx: PartyContext,
    span: tuple[int, int],
    alpha_mask: torch.Tensor,
    terms: list[torch.Tensor],
    seeds: list[torch.Tensor | None],
) -> torch.Tensor | None:
    """The correction words of the keys of elements lo..hi-1: the dealer generates them (from
    the full masks and both root seeds) and sends them to parties 0 and 1 (one op tag); a key
    holder returns its copy, everyone else (and the dry run) None."""
    pre = ctx.pre
    lo, hi = span
    payload = 1 + len(terms)

    @functools.cache
    def generate() -> torch.Tensor:  # the dealer's: once for both deliveries
        s0, s1 = seeds
        if s0 is None or s1 is None:
            raise ValueError("fss: only the dealer generates keys")
        mask = alpha_mask.reshape(-1)[lo:hi]
        a = (mask >> SIGN_BIT) & 1
        payload_words = [torch.ones_like(mask)] + [v.reshape(-1)[lo:hi] for v in terms]
        beta = (1 - 2 * a).unsqueeze(1) * torch.stack(payload_words, 1)
        return dcf.gen(mask & _LOW, beta, s0[lo:hi], s1[lo:hi], DOMAIN_BITS).words()

    shape = (hi - lo, dcf.key_words(DOMAIN_BITS, payload))
    words = [pre.deliver("fss/dcf", shape, generate, receiver=p) for p in _KEY_HOLDERS]
    if ctx.dry or ctx.pid not in _KEY_HOLDERS:
        return None
    return words[ctx.pid]
