"""Cryptographic pseudo-random generator: AES-256-CTR keystream turned into ring tensors.

Every share, mask and triple in the toolkit comes from a :class:`PRG`. A PRG is keyed with a
32-byte seed; two holders of the same seed draw identical streams, which is what seed
compression (dealer <-> party) and pairwise zero-sharing (party <-> party) rely on.
torch / numpy random generators are never used for secrets.

Security: the stream is AES-256 in counter mode from the ``cryptography`` package, so a PRG
output is computationally indistinguishable from uniform to anyone who does not hold the seed.
Seeds come from ``os.urandom`` (:func:`fresh_seed`) or from :func:`derive_seed` (HMAC-SHA256).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["SEED_BYTES", "PRG", "fresh_seed", "derive_seed"]

SEED_BYTES = 32


def _encrypt_into(enc: Any, plain: Any, out: np.ndarray, nbytes: int, piece: int) -> None:
    """The next ``nbytes`` of CTR keystream (zeros encrypted) into ``out`` (uint8, at least
    ``nbytes + 15`` long), in pieces of at most ``piece`` bytes (a multiple of 16): the
    encryptor's counter runs on across calls, so the bytes equal one call's."""
    done = 0
    while done < nbytes:
        size = min(piece, nbytes - done)
        enc.update_into(plain(size), out[done : done + size + 15].data)
        done += size


def fresh_seed() -> bytes:
    """A new uniformly random 32-byte seed from the operating system."""
    return os.urandom(SEED_BYTES)


def derive_seed(seed: bytes, label: str) -> bytes:
    """Derive an independent 32-byte seed for ``label`` from ``seed`` (HMAC-SHA256)."""
    return hmac.new(seed, label.encode(), hashlib.sha256).digest()


class PRG:
    """AES-256-CTR keystream as uniform ring elements, bytes, or bits.

    Draws are sequential: two PRGs with the same seed return the same values for the same
    sequence of calls (shapes included).
    """

    __slots__ = ("_seed", "_ecb", "_encryptor", "_zeros", "drawn_bytes", "_buf", "_pos", "_end")

    CHUNK = 8192  # words of keystream produced ahead for small draws (64 KiB)
    # Largest single encryption: a bigger draw is produced piece by piece into its output, so
    # the all-zero plaintext stays at most this size. A plaintext as large as the draw (40 MB
    # for a 5 * 10^6-word mask) cost a fresh page fault per 4 KiB read, ~10^4 per such draw.
    PIECE_BYTES = 4 << 20

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
        self._seed = bytes(seed)
        self._ecb: Any = None  # AES-ECB encryptor for random access (spans_at), made on demand
        cipher = Cipher(algorithms.AES(seed), modes.CTR(b"\x00" * 16))
        self._encryptor = cipher.encryptor()
        self._zeros = b""
        self.drawn_bytes = 0
        self._buf = np.empty(0, dtype=np.int64)  # keystream produced, not yet drawn
        self._pos = 0
        self._end = 0  # len(self._buf), kept as an int

    def _plain(self, n: int) -> memoryview:
        # A cached all-zero plaintext; encrypting zeros in CTR mode yields the keystream.
        if len(self._zeros) < n:
            self._zeros = bytes(max(n, 2 * len(self._zeros)))
        return memoryview(self._zeros)[:n]

    def bytes(self, n: int) -> bytes:
        """The next ``n`` keystream bytes (a multiple of 8: draws stay word-aligned)."""
        if n % 8:
            raise ValueError(f"PRG.bytes: {n} is not a multiple of 8")
        return self.ring((n // 8,)).numpy().tobytes()

    def _keystream(self, count: int) -> np.ndarray:
        # Encrypt straight into the array's memory: update_into avoids two large copies.
        # CTR needs block_size - 1 spare bytes in the output buffer, hence the 2 extra words.
        out = np.empty(count + 2, dtype=np.int64)
        _encrypt_into(self._encryptor, self._plain, out.view(np.uint8), 8 * count,
                      self.PIECE_BYTES)
        return out[:count]

    def _take(self, count: int) -> np.ndarray:
        out = self._buf[self._pos : self._pos + count]
        self._pos += count
        return out

    def ring(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Uniform elements of Z_2^64 as an int64 tensor of ``shape``.

        The keystream is held as a numpy array and handed out as ``torch.from_numpy`` views:
        slicing and reshaping a numpy array costs about half of what torch's indexing does,
        and the training step draws a few hundred small tensors."""
        count = 1
        for s in shape:
            count *= int(s)
        if count == 0:
            return torch.zeros(tuple(shape), dtype=torch.int64)
        self.drawn_bytes += 8 * count
        left = self._end - self._pos
        if count <= left:  # small draws are views of keystream produced ahead
            return torch.from_numpy(self._take(count).reshape(tuple(shape)))
        if count - left >= self.CHUNK // 2:  # large draw: the rest of the buffer, then direct
            out = self._keystream(count - left)
            if left:
                out = np.concatenate([self._take(left), out])
            return torch.from_numpy(out.reshape(tuple(shape)))
        head = self._take(left)
        self._buf, self._pos, self._end = self._keystream(self.CHUNK), 0, self.CHUNK
        if left:
            out = np.concatenate([head, self._take(count - left)])
        else:
            out = self._take(count)
        return torch.from_numpy(out.reshape(tuple(shape)))

    # -- random access (does not move the sequential position) --------------------------------
    def ring_at(self, offset: int, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """The words ``offset, offset + 1, ...`` of this seed's sequential stream, as a ring
        tensor of ``shape``: equal to what sequential draws return at that position.

        CTR mode allows random access: keystream block ``i`` is AES_k(i) (128-bit big-endian
        counter from 0), so a fresh CTR encryptor started at counter ``offset // 2`` yields the
        stream from there. Used to regenerate any row range of a data mask instead of holding
        it (``mpc.learn.masked``)."""
        offset = int(offset)
        if offset < 0:
            raise ValueError(f"PRG.ring_at: negative offset {offset}")
        count = 1
        for s in shape:
            count *= int(s)
        if count == 0:
            return torch.zeros(tuple(shape), dtype=torch.int64)
        first, skip = divmod(offset, 2)  # 2 words per 16-byte AES block
        enc = Cipher(algorithms.AES(self._seed), modes.CTR(first.to_bytes(16, "big"))).encryptor()
        out = torch.empty(count + skip + 2, dtype=torch.int64)
        _encrypt_into(enc, self._plain, out.numpy().view(np.uint8), 8 * (count + skip),
                      self.PIECE_BYTES)
        return out[skip : skip + count].reshape(tuple(shape))

    def spans_at(self, starts: np.ndarray, width: int) -> torch.Tensor:
        """Words ``[s, s + width)`` of the stream for every ``s`` in ``starts``, as a
        (len(starts), width) tensor, in one AES call: the CTR keystream blocks covering each
        span, AES_k(counter), computed with the library's AES on the counter blocks (the
        definition of CTR mode [NIST SP 800-38A]). A scattered batch of mask rows thus costs
        one cipher call, not one per row; the result equals the sequential stream there."""
        first = np.ascontiguousarray(starts, dtype=np.int64).reshape(-1)
        if first.size == 0 or width == 0:
            return torch.zeros((first.size, width), dtype=torch.int64)
        if int(first.min()) < 0:
            raise ValueError("PRG.spans_at: negative start")
        nb = width // 2 + 1  # blocks covering width words from any parity
        counters = np.zeros((first.size, nb, 2), dtype=">u8")
        counters[:, :, 1] = (first // 2)[:, None] + np.arange(nb)
        if self._ecb is None:  # ECB is stateless between calls: one encryptor serves all
            self._ecb = Cipher(algorithms.AES(self._seed), modes.ECB()).encryptor()
        words = np.frombuffer(self._ecb.update(counters.tobytes()), dtype="<i8")
        words = words.reshape(first.size, 2 * nb)
        odd = first & 1
        if not odd.any():
            out = np.array(words[:, :width])
        else:
            out = np.take_along_axis(words, odd[:, None] + np.arange(width), 1)
        return torch.from_numpy(out)

    def below(self, shape: tuple[int, ...] | torch.Size, bits: int) -> torch.Tensor:
        """Uniform integers in [0, 2^bits) as int64, ``0 <= bits <= 63``."""
        if not 0 <= bits <= 63:
            raise ValueError(f"PRG.below: bits must be in [0, 63], got {bits}")
        return self.ring(shape) & ((1 << bits) - 1)

    def permutation(self, n: int) -> torch.Tensor:
        """A uniformly random permutation of range(n) (for public shuffles from a shared seed)."""
        keys = self.ring((n,))
        return torch.argsort(keys, stable=True)
