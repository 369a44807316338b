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

PRG: G expands a seed with AES-128 under fixed public keys in Matyas-Meyer-Oseas mode,
G_j(x) = AES_{K_j}(x) xor x, a correlation-robust hash in the ideal-cipher model [GKWY20]. A
node's seed s (lowest bit cleared) gives its left child from x = s and its right child from
x = s | 1: block j = 0 is the child's seed, its lowest bit being the child's control bit
(cleared in the seed); blocks j = 1..V the child's payload words (2 per block); the last
seed gives the output words under keys of their own (Convert). Evaluation expands only the
child that z's bit selects. One AES-ECB call per key (the ``cryptography`` package, OpenSSL)
covers a whole level for every key and point; the loop in Python runs over the k levels only,
numpy over everything else.

Sizes, for domain bits k and payload length L (V = ceil(L / 2) blocks of payload per child):

* a key is (root seed, party bit) + correction words. The root seed (16 bytes) is drawn from
  the party's own seed-compressed dealer stream (``Preprocessing.party_seed_words``), so it is
  never sent; the correction words, identical in both keys, are
  k (16 + 8L) + 8 ceil(2k / 64) + 8L bytes: 984 bytes for k = 30, L = 2 (123 words);
  1232 for L = 3.
* Gen: 4 k (1 + V) + 2V AES blocks per key (both parties, both children);
  Eval: k (1 + V) + V AES blocks per point (one child per level), e.g. 62 for k = 30, L = 2.
  Points of one key that agree on their top bits up to two prefixes (the comparison gate's
  c - t_k for nearby thresholds) walk those levels once per prefix: for the sigmoid's 16
  knots (spread 2^20 ring units) 10 of the 30 levels run for 2 points instead of 16.

Measured (``python bench/fss_bench.py``, 2-core AMD EPYC, quiet, 1 thread, best CPU time;
k = 30, L = 2): Gen 1.6 ms for 128 keys, 10.5 ms for 1024 (~10-12 us per key); Eval of the
sigmoid's points (c - t_k for 16 knots) 1.4 ms for 128 keys x 16, 13 ms for 1024 x 16
(~0.8 us per point); ReLU's (one point per key) 1.3 ms for 1024.

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

import functools
import hashlib
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["SEED_WORDS", "MAX_BITS", "DCFKey", "key_words", "gen", "evaluate"]

SEED_WORDS = 2  # a 128-bit seed as two 64-bit words
MAX_BITS = 63  # domain Z_{2^k}, k <= 63 (points are non-negative int64)


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


_LOCAL = threading.local()


def _encryptor(key: bytes) -> Any:
    """A fixed-key AES-ECB encryptor, made once per thread and key: ECB keeps no state
    between calls, but an OpenSSL context must not be shared by threads."""
    cache = getattr(_LOCAL, "encryptors", None)
    if cache is None:
        cache = _LOCAL.encryptors = {}
    enc = cache.get(key)
    if enc is None:
        enc = cache[key] = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc


class _Expander:
    """G on many inputs at once: AES-128 MMO under fixed public keys K_0, K_1, ..: block j of
    input x is AES_{K_j}(x) xor x, one ECB call per key over all inputs. Outputs go to two
    buffers used in turn (a result stays valid through the next call, so it can be the next
    input) and reused across the tree's levels (fresh large arrays would page-fault each time).
    Layout (key, *shape, word): numpy runs over long contiguous rows."""

    def __init__(self, shape: tuple[int, ...], keys: Sequence[bytes]) -> None:
        self._encs = [_encryptor(k) for k in keys]
        self._shape = (len(keys), *shape, SEED_WORDS)
        self._per = SEED_WORDS * math.prod(shape)  # words per key
        # ECB's update_into wants 15 spare bytes after each output
        self._raw = [np.empty(len(keys) * self._per + 2, dtype=np.uint64) for _ in range(2)]
        per = self._per
        # per buffer: the byte views each key's ECB call writes to, and the result array
        self._dst = [
            [raw[j * per : (j + 1) * per + 2].view(np.uint8).data for j in range(len(keys))]
            for raw in self._raw
        ]
        self.outputs = [raw[: len(keys) * per].reshape(self._shape) for raw in self._raw]
        self._turn = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """AES_{K_j}(x) xor x for every key j: shape (J, *x.shape); x C-contiguous (*shape, 2).
        Results alternate between the two arrays of ``outputs``, the first call's in
        ``outputs[0]``."""
        turn = self._turn
        self._turn = turn ^ 1
        data = x.reshape(-1).view(np.uint8).data
        for enc, dst in zip(self._encs, self._dst[turn], strict=True):
            enc.update_into(data, dst)
        out = self.outputs[turn]
        out ^= x
        return out


@functools.cache
def _fixed_key(label: str) -> bytes:
    return hashlib.sha256(b"mpc.core.dcf fixed AES-128 key: " + label.encode()).digest()[:16]


def _keys(payload: int) -> list[bytes]:
    """The PRG's fixed keys: the child's seed block, then ceil(L / 2) value blocks."""
    return [_fixed_key("seed")] + [_fixed_key(f"value/{j}") for j in range((payload + 1) // 2)]


def _last_to(a: np.ndarray, axis: int) -> np.ndarray:
    """``np.moveaxis(a, -1, axis)`` as a plain transpose (moveaxis normalises its axes in
    Python, ~20 us a call: it dominated small evaluations)."""
    dims = list(range(a.ndim - 1))
    dims.insert(axis, a.ndim - 1)
    return a.transpose(dims)


def _values(out: np.ndarray, payload: int) -> np.ndarray:
    """The payload words (L, ...) of expanded blocks (J, ..., 2), word w being word w % 2 of
    value block 1 + w // 2."""
    nv = (payload + 1) // 2
    if nv == 1:
        return _last_to(out[1], 0)[:payload]  # a view
    return _last_to(out[1:], 1).reshape((2 * nv,) + out.shape[1:-1])[:payload]


def _root(seed: torch.Tensor) -> np.ndarray:
    """Root seeds (m, 2) int64 -> uint64 blocks, lowest bit cleared (the control bit of a
    seed block lives there)."""
    s = np.ascontiguousarray(seed.numpy()).view(np.uint64).copy()
    s[:, 0] &= ~np.uint64(1)
    return s


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
    one, zero = np.uint64(1), np.uint64(0)
    expand = _Expander((2, 2, m), _keys(ln))  # inputs (child side, party, key)
    x = np.empty((2, 2, m, SEED_WORDS), dtype=np.uint64)
    s = np.stack([_root(seed0), _root(seed1)])  # (party, m, 2)
    t = np.zeros((2, m), dtype=np.uint64)
    t[1] = 1
    v_alpha = np.zeros((ln, m), dtype=np.uint64)
    seed_cw = np.empty((bits, SEED_WORDS, m), dtype=np.uint64)
    value_cw = np.empty((bits, ln, m), dtype=np.uint64)
    control_cw = np.empty((bits, 2, m), dtype=np.uint64)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)[:, None]
    alpha_bits = (a_all[None] >> shifts) & one  # (level, m): 0 keeps left, 1 right
    rights = alpha_bits.astype(bool)
    beta_in = b[None] * alpha_bits[:, None, :]  # (level, L, m): beta where alpha's bit is 1
    # t_CW^L = t_0^L ^ t_1^L ^ alpha_i ^ 1, t_CW^R = t_0^R ^ t_1^R ^ alpha_i: the alpha part
    flips = np.stack([alpha_bits ^ one, alpha_bits], 1)  # (level, side, m)
    x[:] = s  # left child: the seed; right child: the seed with its lowest bit set
    inputs = x.transpose(0, 3, 1, 2)  # (side, word, party, m) view
    for i in range(bits):
        right = rights[i]
        x[1, ..., 0] |= one
        out = expand(x)  # (J, side, party, m, 2)
        ctl = out[0, ..., 0] & one  # (side, party, m)
        out[0, ..., 0] ^= ctl
        planes = _last_to(out[0], 0)  # (word, side, party, m) view: both seed words at once
        keep = np.where(right, planes[:, 1], planes[:, 0])  # (word, party, m)
        lose = np.where(right, planes[:, 0], planes[:, 1])
        sign = one - (t[1] << one)  # (-1)^t_1 in Z_2^64
        v = _values(out, ln)  # (L, side, party, m)
        v_lose = np.where(right, v[:, 0], v[:, 1])  # (L, party, m)
        v_keep = np.where(right, v[:, 1], v[:, 0])
        # V_CW = (-1)^t1 [v_1^lose - v_0^lose - V_alpha (+ beta if the left child is lost)]
        v_cw = value_cw[i]  # written in place, as are the other correction words
        np.multiply(sign, v_lose[:, 1] - v_lose[:, 0] - v_alpha + beta_in[i], out=v_cw)
        v_alpha += v_keep[:, 0] - v_keep[:, 1] + sign * v_cw
        s_cw = np.bitwise_xor(lose[:, 0], lose[:, 1], out=seed_cw[i])  # (word, m)
        t_cw = control_cw[i]  # (side, m): t_CW^L, t_CW^R
        np.bitwise_xor(ctl[:, 0] ^ ctl[:, 1], flips[i], out=t_cw)
        gate = zero - t  # all ones where the control bit is set
        # the kept seeds go straight into both children's inputs of the next level
        keep ^= s_cw[:, None, :] & gate
        inputs[:] = keep  # (side, word, party, m) view of x: both children, both words
        t = np.where(right, ctl[1], ctl[0]) ^ (t & np.where(right, t_cw[1], t_cw[0]))
    conv = _convert(x[0], ln)  # (L, party, m): the final seeds
    sign = one - (t[1] << one)
    final = sign * (conv[:, 1] - conv[:, 0] - v_alpha)
    return DCFKey(bits, seed_cw, value_cw, control_cw, final)


def _convert(seeds: np.ndarray, payload: int) -> np.ndarray:
    """Convert(s): ``payload`` pseudorandom ring words from each final seed (..., 2) ->
    (L, ...), under keys of their own."""
    nv = (payload + 1) // 2
    keys = [_fixed_key(f"convert/{j}") for j in range(nv)]
    out = _Expander(seeds.shape[:-1], keys)(np.ascontiguousarray(seeds))
    return _last_to(out, 1).reshape((2 * nv,) + seeds.shape[:-1])[:payload]


def evaluate(
    party: int,
    seed: torch.Tensor,
    key: DCFKey,
    points: torch.Tensor,
    *,
    payload_first: bool = False,
) -> torch.Tensor:
    """Party ``party``'s shares of f(z) for points z of shape (P, m) (column j under key j):
    int64 of shape (P, m, L), or (L, P, m) with ``payload_first`` (the layout it is computed
    in: no transposing copy). Cost: see module doc (one child per level).

    Points of one key that share the top d bits with either the smallest or the largest of
    them (e.g. c - t_k for K nearby thresholds t_k) walk those d levels once per group, as two
    points, and split afterwards."""
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
    shared = _shared_levels(z, k) if p > 2 and m else 0
    root = _root(seed)
    if shared:
        ends = np.stack([z.min(0), z.max(0)])  # (2, m): one point per prefix group
        x = np.empty((2, m, SEED_WORDS), dtype=np.uint64)
        x[:] = root
        t = np.full((2, m), party, dtype=np.uint64)
        acc = np.zeros((ln, 2, m), dtype=np.uint64)
        x, t = _descend(party, key, ends, range(shared), x, t, acc)
        shift = np.uint64(k - shared)
        group = ((z >> shift) != (ends[0] >> shift)).astype(np.intp)  # (P, m): 0 min, 1 max
        cols = np.arange(m)[None, :]
        x, t, acc = x[group, cols], t[group, cols], acc[:, group, cols]
    else:
        x = np.empty((p, m, SEED_WORDS), dtype=np.uint64)
        x[:] = root
        t = np.full((p, m), party, dtype=np.uint64)
        acc = np.zeros((ln, p, m), dtype=np.uint64)
    x, t = _descend(party, key, z, range(shared, k), x, t, acc)
    last = _convert(x, ln) + (key.final[:, None, :] & (np.uint64(0) - t))
    if party:
        acc -= last
    else:
        acc += last
    if payload_first:
        return torch.from_numpy(acc.view(np.int64))
    return torch.from_numpy(np.ascontiguousarray(acc.transpose((*range(1, acc.ndim), 0)))
                            .view(np.int64))


def _shared_levels(z: np.ndarray, k: int) -> int:
    """The most top levels d such that every point of a key has the d-bit prefix of the
    smallest or of the largest point of that key (monotone in d: binary search)."""
    low, high = z.min(0), z.max(0)
    if k <= 52:  # directly: a point keeps the d-bit prefix of low (high) iff z ^ low (z ^ high)
        # has at most k - d bits; float64 holds these exactly, and frexp's exponent of a
        # positive integer is its bit length (0 for 0)
        lo_bits = np.frexp((z ^ low).astype(np.float64))[1]
        hi_bits = np.frexp((z ^ high).astype(np.float64))[1]
        return k - int(np.minimum(lo_bits, hi_bits).max())

    def fits(d: int) -> bool:
        s = np.uint64(k - d)
        prefix = z >> s
        return bool(((prefix == (low >> s)) | (prefix == (high >> s))).all())

    lo, hi = 0, k
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _descend(
    party: int,
    key: DCFKey,
    z: np.ndarray,
    levels: range,
    x: np.ndarray,
    t: np.ndarray,
    acc: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Walk points z (P, m) down ``levels`` from seeds x (P, m, 2) (lowest bit clear) and
    control bits t (P, m), adding the level outputs into acc (L, P, m) in place; returns the
    seeds and control bits reached."""
    if not len(levels):
        return x, t
    one, zero = np.uint64(1), np.uint64(0)
    p, m = z.shape
    expand = _Expander((p, m), _keys(key.payload))
    k = key.bits
    shifts = np.array([k - 1 - i for i in levels], dtype=np.uint64).reshape(-1, 1, 1)
    path = (z[None] >> shifts) & one  # (levels, P, m): z's bits, most significant first
    # the control-bit correction of the chosen child at every level: t_CW^L, or t_CW^R where
    # z's bit is 1, in two operations for all levels
    control = key.control[levels.start : levels.stop]
    flip = (control[:, 0] ^ control[:, 1])[:, None, :]
    chosen_cw = (path & flip) ^ control[:, 0][:, None, :]
    # views of the expander's two result arrays (used in turn, from the first): low and high
    # word planes of the child's seed (2, P, m), and its payload words (L, P, m) if a view
    children = [_last_to(out[0], 0) for out in expand.outputs]
    values = [_values(out, key.payload) for out in expand.outputs]
    views = all(np.shares_memory(v, out) for v, out in zip(values, expand.outputs, strict=True))
    seed_cw = key.seed[:, :, None, :]  # (k, word, 1, m)
    value_cw = key.value[:, :, None, :]  # (k, L, 1, m)
    for j, i in enumerate(levels):
        x[..., 0] |= path[j]  # the child z's bit selects (lowest bit set: right), only
        out = expand(x)
        child = children[j & 1]
        ctl = child[0] & one
        child[0] ^= ctl
        gate = zero - t  # all ones where the control bit is set
        # (word, 1, m) & (P, m): broadcasts over leading axes only, keeping rows contiguous
        child ^= seed_cw[i] & gate
        ctl ^= t & chosen_cw[j]
        # (payloads of more than one block are a copy: taken after the expansion)
        vals = values[j & 1] if views else _values(out, key.payload)
        vals += value_cw[i] & gate
        if party:
            acc -= vals
        else:
            acc += vals
        x, t = out[0], ctl
    return x, t
