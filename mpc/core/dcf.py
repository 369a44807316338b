"""Distributed comparison function (DCF) from fixed-key AES [BGI19, Fig. 1 (Gen^<, Eval^<)].

A DCF key pair (k_0, k_1) for a secret threshold alpha in Z_{2^k} and a secret payload
beta in (Z_2^64)^L shares the function f(z) = beta * [z < alpha]: for every public z,
``evaluate(0, k_0, z) + evaluate(1, k_1, z) = f(z)`` word by word in Z_2^64, so the outputs are
additive (arithmetic) shares directly, and either key alone is pseudorandom: it reveals
neither alpha nor beta. This module holds the key generation and evaluation only; the gate
that turns it into a comparison of shared values is ``mpc.protocols.fsscompare``.

Construction (the tree of [BGI19], Fig. 1): each key walks the path of z through a binary tree
of depth k, one 128-bit seed s and one control bit t per node. Off the path of alpha both
parties' seeds agree (their outputs cancel); on it they differ, and the per-level correction
words (s_CW, V_CW, t_CW^L, t_CW^R), shared by both keys, add beta exactly when z leaves the
path of alpha to the left of it (z_i = 0 where alpha_i = 1), i.e. when z < alpha.

PRG: G expands a seed with fixed-key AES-128 in Matyas-Meyer-Oseas mode,
G_j(s) = AES_K(s xor j) xor s xor j (j a public tweak, XORed into the low word; K a public
constant), a correlation-robust hash in the ideal-cipher model [GKWY20]. Per node: block j = 0
(1) gives the left (right) child's seed, its lowest bit being the child's control bit (cleared
in the seed); blocks 2.. give the payload words of the left child, then of the right child
(2 words per block). Evaluation expands only the child that z's bit selects. One AES-ECB call
(the ``cryptography`` package, OpenSSL) covers a whole level for every key and point; the loop
in Python runs over the k levels only, numpy over everything else.

Sizes, for domain bits k and payload length L (V = ceil(L / 2) blocks of payload per child):

* a key is (root seed, party bit) + correction words. The root seed (16 bytes) is drawn from
  the party's own seed-compressed dealer stream (``Preprocessing.party_seed_words``), so it is
  never sent; the correction words, identical in both keys, are
  k (16 + 8L) + 8 ceil(2k / 64) + 8L bytes: 984 bytes for k = 30, L = 2 (123 words);
  1232 for L = 3.
* Gen: 2 k (2 + 2V) + 2V AES blocks per key (both parties, both children);
  Eval: k (1 + V) + V AES blocks per point (one child per level), e.g. 62 for k = 30, L = 2.

Measured (``python bench/fss_bench.py``, 2-core AMD EPYC shared with other jobs, 1 thread,
CPU-time medians; k = 30, L = 2): Gen 3.2 ms for 128 keys, 6-11 ms for 1024 (~7-25 us per
key); Eval 2.9 ms for 2048 points (128 keys x 16), 22 ms for 16384 (~1.4 us per point).

Security: semi-honest; the dealer that runs :func:`gen` knows alpha and beta. Both keys
together reveal alpha and beta, so the two key holders must not collude (for 2 parties they
jointly know the compared values anyway). Seeds must come from a cryptographic PRG (the
dealer's AES-CTR streams), never torch/numpy generators.

Not here: interval containment with several keys, early termination (packing leaves into a
block), and batching of Eval across independent calls.

[GKWY20] C. Guo, J. Katz, X. Wang, Y. Yu. Efficient and secure multiparty computation from
fixed-key block ciphers. IEEE S&P 2020.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["SEED_WORDS", "MAX_BITS", "DCFKey", "key_words", "gen", "evaluate"]

SEED_WORDS = 2  # a 128-bit seed as two 64-bit words
MAX_BITS = 63  # domain Z_{2^k}, k <= 63 (points are non-negative int64)
_FIXED_KEY = hashlib.sha256(b"mpc.core.dcf: fixed AES-128 key of the MMO PRG").digest()[:16]
_CONVERT_TWEAK = 1 << 32  # tweaks of the final seed -> payload conversion (levels use < 2^32)


def key_words(bits: int, payload: int) -> int:
    """Int64 words of one key's correction words (shared by both keys)."""
    return bits * (SEED_WORDS + payload) + _t_words(bits) + payload


def _t_words(bits: int) -> int:
    return (2 * bits + 63) // 64


def _check(bits: int, payload: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"dcf: domain bits must be in [1, {MAX_BITS}], got {bits}")
    if payload < 1:
        raise ValueError(f"dcf: payload length must be >= 1, got {payload}")


@dataclass(frozen=True)
class DCFKey:
    """Correction words of m DCF keys (the part both parties' keys share), as uint64 arrays
    with the key index last: ``seed`` (k, 2, m) (low, high word), ``value`` (k, L, m),
    ``control`` (k, 2, m) bits (left, right child), ``final`` (L, m)."""

    bits: int
    seed: np.ndarray
    value: np.ndarray
    control: np.ndarray
    final: np.ndarray

    @property
    def count(self) -> int:
        return int(self.final.shape[1])

    @property
    def payload(self) -> int:
        return int(self.final.shape[0])

    def words(self) -> torch.Tensor:
        """The correction words as int64 of shape (m, :func:`key_words`), for the wire."""
        k, m = self.bits, self.count
        tw = _t_words(k)
        flags = np.zeros((64 * tw, m), dtype=np.uint64)
        flags[: 2 * k] = self.control.reshape(2 * k, m)
        shifts = np.arange(64, dtype=np.uint64)[None, :, None]
        packed = np.bitwise_or.reduce(flags.reshape(tw, 64, m) << shifts, axis=1)
        parts = [
            self.seed.reshape(SEED_WORDS * k, m),
            self.value.reshape(self.payload * k, m),
            packed,
            self.final,
        ]
        return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts).T).view(np.int64))

    @classmethod
    def from_words(cls, words: torch.Tensor, bits: int, payload: int) -> DCFKey:
        """Inverse of :meth:`words`."""
        _check(bits, payload)
        m = int(words.shape[0])
        if tuple(words.shape) != (m, key_words(bits, payload)):
            raise ValueError(
                f"dcf: key words of shape {tuple(words.shape)}, expected "
                f"({m}, {key_words(bits, payload)}) for {bits} bits, payload {payload}"
            )
        w = np.ascontiguousarray(words.numpy().view(np.uint64).T)
        k, ln, tw = bits, payload, _t_words(bits)
        seed = w[: SEED_WORDS * k].reshape(k, SEED_WORDS, m)
        at = SEED_WORDS * k
        value = w[at : at + ln * k].reshape(k, ln, m)
        at += ln * k
        shifts = np.arange(64, dtype=np.uint64)[None, :, None]
        flags = (w[at : at + tw, None, :] >> shifts) & np.uint64(1)
        control = np.ascontiguousarray(flags.reshape(64 * tw, m)[: 2 * k].reshape(k, 2, m))
        return cls(bits, seed, value, control, w[at + tw :])


class _Expander:
    """G on many seeds at once: fixed-key AES-128 MMO, one ECB call per expansion, into
    buffers reused across the tree's levels (fresh large arrays would page-fault each time).
    Seeds are kept as two uint64 arrays (low, high word) of one shape; blocks are laid out
    (tweak, *shape, word) so that every numpy operation runs over long contiguous rows."""

    def __init__(self, shape: tuple[int, ...], blocks: int) -> None:
        # One cipher context per call site: OpenSSL contexts must not be shared by threads.
        self._enc = Cipher(algorithms.AES(_FIXED_KEY), modes.ECB()).encryptor()
        self._in = np.empty((blocks, *shape, SEED_WORDS), dtype=np.uint64)
        self._raw = np.empty(self._in.size + 2, dtype=np.uint64)  # ECB wants 15 spare bytes
        self._out = self._raw[: self._in.size].reshape(self._in.shape)

    def __call__(
        self, lo: np.ndarray, hi: np.ndarray, tweaks: Sequence[np.ndarray | np.uint64]
    ) -> np.ndarray:
        """Blocks G_j(s) = AES_K(s xor j) xor s xor j, (tweak, *shape, word). The result is
        overwritten by the next call."""
        blocks = self._in
        for j, tweak in enumerate(tweaks):
            np.bitwise_xor(lo, tweak, out=blocks[j, ..., 0])
            blocks[j, ..., 1] = hi
        return self._encrypt()

    def chosen(self, lo: np.ndarray, hi: np.ndarray, side: np.ndarray) -> np.ndarray:
        """The blocks of one child per seed, ``side`` (0 left / 1 right, an array of the
        seeds' shape): tweaks side, 2 + side, 4 + side, ... (see :func:`_tweaks`)."""
        blocks = self._in
        np.bitwise_xor(lo, side, out=blocks[0, ..., 0])
        blocks[0, ..., 1] = hi
        for j in range(1, blocks.shape[0]):
            np.bitwise_xor(blocks[0, ..., 0], np.uint64(2 * j), out=blocks[j, ..., 0])
            blocks[j, ..., 1] = hi
        return self._encrypt()

    def _encrypt(self) -> np.ndarray:
        blocks = self._in
        data = blocks.reshape(-1).view(np.uint8).data
        self._enc.update_into(data, self._raw.view(np.uint8).data)
        self._out ^= blocks
        return self._out


def _tweaks(payload: int) -> list[np.uint64]:
    """Tweaks of both children of a node: left seed 0, right seed 1, then the value blocks
    2j + side for j = 1..V, interleaved (left, right) so that one child's tweaks differ from
    its seed block's by the constant 2j."""
    nv = (payload + 1) // 2
    return [np.uint64(j) for j in range(2 + 2 * nv)]


def _split_seed(seed: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Root seeds (m, 2) int64 -> (low, high) uint64 words, low bit cleared (the control bit
    of a seed block lives there)."""
    s = np.ascontiguousarray(seed.numpy()).view(np.uint64)
    return s[:, 0] & ~np.uint64(1), s[:, 1].copy()


def _payload_words(out: np.ndarray, first: int, count: int) -> list[np.ndarray]:
    """Payload word w of the blocks starting at tweak slot ``first``: word w % 2 of block
    first + w // 2 (two ring words per AES block)."""
    return [out[first + w // 2, ..., w % 2] for w in range(count)]


def gen(
    alpha: torch.Tensor, beta: torch.Tensor, seed0: torch.Tensor, seed1: torch.Tensor, bits: int
) -> DCFKey:
    """Correction words of m DCF keys for f(z) = beta * [z < alpha] on Z_{2^bits} (dealer).

    ``alpha``: int64 (m,) in [0, 2^bits); ``beta``: int64 (m, L) ring words; ``seed0``,
    ``seed1``: int64 (m, 2), the parties' root seeds (uniform, from their dealer streams).
    Party b's key is (seed_b, b) with the returned correction words. Cost: see module doc.
    """
    m = int(alpha.shape[0])
    if beta.dim() != 2 or int(beta.shape[0]) != m:
        raise ValueError(f"dcf.gen: beta must have shape ({m}, L), got {tuple(beta.shape)}")
    ln = int(beta.shape[1])
    _check(bits, ln)
    for name, sd in (("seed0", seed0), ("seed1", seed1)):
        if tuple(sd.shape) != (m, SEED_WORDS):
            raise ValueError(f"dcf.gen: {name} must have shape ({m}, 2), got {tuple(sd.shape)}")
    a_all = np.ascontiguousarray(alpha.numpy()).view(np.uint64)
    if m and int(a_all.max()) >> bits:
        raise ValueError(f"dcf.gen: alpha outside [0, 2^{bits})")
    b = np.ascontiguousarray(beta.numpy().view(np.uint64).T)  # (L, m)
    nv = (ln + 1) // 2
    one, zero = np.uint64(1), np.uint64(0)
    # Blocks per party and key: left seed, right seed, left values (nv), right values (nv).
    expand = _Expander((2, m), 2 + 2 * nv)
    tweaks = _tweaks(ln)
    (lo0, hi0), (lo1, hi1) = _split_seed(seed0), _split_seed(seed1)
    lo, hi = np.stack([lo0, lo1]), np.stack([hi0, hi1])  # (party, m)
    t = np.zeros((2, m), dtype=np.uint64)
    t[1] = 1
    v_alpha = np.zeros((ln, m), dtype=np.uint64)
    seed_cw = np.empty((bits, SEED_WORDS, m), dtype=np.uint64)
    value_cw = np.empty((bits, ln, m), dtype=np.uint64)
    control_cw = np.empty((bits, 2, m), dtype=np.uint64)
    for i in range(bits):
        a = (a_all >> np.uint64(bits - 1 - i)) & one  # alpha's bit: 0 keeps left, 1 right
        right = a.astype(bool)
        out = expand(lo, hi, tweaks)
        ctl_l = out[0, ..., 0] & one
        ctl_r = out[1, ..., 0] & one
        out[0, ..., 0] ^= ctl_l
        out[1, ..., 0] ^= ctl_r
        keep_lo = np.where(right, out[1, ..., 0], out[0, ..., 0])
        keep_hi = np.where(right, out[1, ..., 1], out[0, ..., 1])
        lose_lo = np.where(right, out[0, ..., 0], out[1, ..., 0])
        lose_hi = np.where(right, out[0, ..., 1], out[1, ..., 1])
        sign = one - (t[1] << one)  # (-1)^t_1 in Z_2^64
        for w in range(ln):
            # word w sits in value block j = 1 + w // 2: slot 2j (left) / 2j + 1 (right)
            v_l = out[2 + 2 * (w // 2), ..., w % 2]
            v_r = out[3 + 2 * (w // 2), ..., w % 2]
            v_lose = np.where(right, v_l, v_r)
            v_keep = np.where(right, v_r, v_l)
            # V_CW = (-1)^t1 [v_1^lose - v_0^lose - V_alpha (+ beta if the left child is lost)]
            v_cw = sign * (v_lose[1] - v_lose[0] - v_alpha[w] + b[w] * a)
            v_alpha[w] += v_keep[0] - v_keep[1] + sign * v_cw
            value_cw[i, w] = v_cw
        s_cw_lo = lose_lo[0] ^ lose_lo[1]
        s_cw_hi = lose_hi[0] ^ lose_hi[1]
        t_cw_l = ctl_l[0] ^ ctl_l[1] ^ a ^ one
        t_cw_r = ctl_r[0] ^ ctl_r[1] ^ a
        gate = zero - t  # all ones where the control bit is set
        lo = keep_lo ^ (s_cw_lo & gate)
        hi = keep_hi ^ (s_cw_hi & gate)
        t = np.where(right, ctl_r, ctl_l) ^ (t & np.where(right, t_cw_r, t_cw_l))
        seed_cw[i, 0], seed_cw[i, 1] = s_cw_lo, s_cw_hi
        control_cw[i, 0], control_cw[i, 1] = t_cw_l, t_cw_r
    conv = _convert(lo, hi, ln)
    sign = one - (t[1] << one)
    final = np.stack([sign * (c[1] - c[0] - v) for c, v in zip(conv, v_alpha, strict=True)])
    return DCFKey(bits, seed_cw, value_cw, control_cw, final)


def _convert(lo: np.ndarray, hi: np.ndarray, payload: int) -> list[np.ndarray]:
    """Convert(s): ``payload`` pseudorandom ring words from each final seed."""
    nv = (payload + 1) // 2
    out = _Expander(lo.shape, nv)(lo, hi, [np.uint64(_CONVERT_TWEAK + j) for j in range(nv)])
    return [w.copy() for w in _payload_words(out, 0, payload)]


def evaluate(party: int, seed: torch.Tensor, key: DCFKey, points: torch.Tensor) -> torch.Tensor:
    """Party ``party``'s shares of f(z) for points z of shape (P, m) (column j under key j):
    int64 of shape (P, m, L). Cost: see module doc (one child per level)."""
    if party not in (0, 1):
        raise ValueError(f"dcf.evaluate: party must be 0 or 1, got {party}")
    m, ln, k = key.count, key.payload, key.bits
    if points.dim() != 2 or int(points.shape[1]) != m or tuple(seed.shape) != (m, SEED_WORDS):
        raise ValueError(
            f"dcf.evaluate: points {tuple(points.shape)} / seeds {tuple(seed.shape)} do not "
            f"fit {m} keys: need (P, {m}) and ({m}, 2)"
        )
    p = int(points.shape[0])
    z = np.ascontiguousarray(points.numpy()).view(np.uint64)
    if z.size and int(z.max()) >> k:
        raise ValueError(f"dcf.evaluate: points outside [0, 2^{k})")
    nv = (ln + 1) // 2
    one, zero = np.uint64(1), np.uint64(0)
    expand = _Expander((p, m), 1 + nv)
    shifts = np.arange(k - 1, -1, -1, dtype=np.uint64).reshape(k, 1, 1)
    path = (z[None] >> shifts) & one  # (k, P, m): z's bits, most significant first
    lo0, hi0 = _split_seed(seed)
    lo, hi = np.broadcast_to(lo0, (p, m)), np.broadcast_to(hi0, (p, m))
    t = np.full((p, m), party, dtype=np.uint64)
    acc = np.zeros((ln, p, m), dtype=np.uint64)
    # the control-bit correction of the chosen child at every level: t_CW^L, or t_CW^R where
    # z's bit is 1 (k, P, m), in two operations for the whole tree
    flip = (key.control[:, 0] ^ key.control[:, 1])[:, None, :]
    chosen_cw = (path & flip) ^ key.control[:, 0][:, None, :]
    for i in range(k):
        bit = path[i]
        out = expand.chosen(lo, hi, bit)  # the child that z's bit selects, only
        child = np.moveaxis(out[0], -1, 0)  # (2, P, m) view: low and high word planes
        ctl = child[0] & one
        child[0] ^= ctl
        gate = zero - t  # all ones where the control bit is set
        # (word, 1, m) & (P, m): broadcasts over leading axes only, keeping rows contiguous
        child ^= key.seed[i][:, None, :] & gate
        ctl ^= t & chosen_cw[i]
        if nv == 1:
            vals = np.moveaxis(out[1], -1, 0)[:ln]  # (L, P, m) view
        else:
            vals = np.moveaxis(out[1:], -1, 1).reshape(2 * nv, p, m)[:ln]
        vals += key.value[i][:, None, :] & gate
        if party:
            acc -= vals
        else:
            acc += vals
        lo, hi, t = child[0], child[1], ctl
    gate = zero - t
    for w, c in enumerate(_convert(lo, hi, ln)):
        c += key.final[w] & gate
        if party:
            acc[w] -= c
        else:
            acc[w] += c
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(acc, 0, -1)).view(np.int64))
