"""Correlated randomness from a dealer, with seed compression [Bea91, SecureML17].

The dealer shares one 32-byte AES-CTR seed with each party (sent once over mutual TLS). A party
expands every random share it needs from its seed; for a *correlated* value (the ``c = ab`` of a
Beaver triple, ``r >> f`` of a truncation pair, ...) all parties but one expand their shares and
the dealer sends only that one party an explicit correction. Dealer traffic is therefore about
one ring element per correlated element, independent of the number of parties.

One class serves both sides. In the party role the methods return this party's shares. In the
dealer role the same methods return the *full* values (the dealer needs them to compute the
correlations) and send the corrections; the dealer drives them by running the parties' program
on dummy data ("dry run"), so both sides request material in the same order and nothing has to
be negotiated online. Each correction frame carries the request's op tag and shape, so a party
whose program diverges from the dealer's gets :class:`PreprocessingExhausted` immediately.

Trust: the dealer is semi-honest and does not collude with any party. It never receives data or
shares of data: it only sends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from mpc.core.errors import PreprocessingExhausted, ProtocolError
from mpc.core.prg import PRG, derive_seed

__all__ = ["CorrectionSource", "CorrectionSink", "Preprocessing"]

Shape = tuple[int, ...]


class CorrectionSource(Protocol):
    """Where a party reads the dealer's corrections (a TLS link, or a queue in simulation)."""

    def read(self, op: str, shape: Shape) -> torch.Tensor: ...


class CorrectionSink(Protocol):
    """Where the dealer writes the correction for party ``to``."""

    def write(self, to: int, op: str, value: torch.Tensor) -> None: ...


class Preprocessing:
    """Dealer material for party ``pid`` (party role) or for all parties (dealer role).

    Build with :meth:`for_party` or :meth:`for_dealer`.
    """

    def __init__(
        self,
        n: int,
        pid: int | None,
        prgs: dict[int, PRG],
        source: CorrectionSource | None,
        sink: CorrectionSink | None,
        seeds: dict[int, bytes] | None = None,
    ) -> None:
        self.n = n
        self.pid = pid
        self._prgs = prgs
        self._source = source
        self._sink = sink
        self.elements = 0  # ring elements of material handed out (this party / all parties)
        self.received = 0  # bytes of explicit dealer values read (party role)
        self._seeds = dict(seeds or {})
        self._masks = 0  # data masks derived so far (a fresh label each)

    @classmethod
    def for_party(cls, n: int, pid: int, seed: bytes, source: CorrectionSource) -> Preprocessing:
        return cls(n, pid, {pid: PRG(seed)}, source, None, {pid: seed})

    @classmethod
    def for_dealer(cls, n: int, seeds: dict[int, bytes], sink: CorrectionSink) -> Preprocessing:
        if sorted(seeds) != list(range(n)):
            raise ValueError(f"for_dealer: need seeds for parties 0..{n - 1}")
        return cls(n, None, {p: PRG(s) for p, s in seeds.items()}, None, sink, seeds)

    @property
    def is_dealer(self) -> bool:
        return self.pid is None

    # -- building blocks ----------------------------------------------------------------------
    def random(self, shape: Shape) -> torch.Tensor:
        """Shares of a uniform ring tensor (dealer: the full value). No dealer traffic."""
        return self._uniform(shape, torch.add)

    def correlated(
        self, op: str, shape: Shape, value: Callable[[], torch.Tensor], receiver: int = 0
    ) -> torch.Tensor:
        """Shares of a dealer-computed value; only ``receiver`` gets an explicit correction.

        ``value`` is evaluated by the dealer only (on the full values it holds).
        """
        return self._correlated(op, shape, value, receiver, torch.sub)

    def deliver(
        self, op: str, shape: Shape, value: Callable[[], torch.Tensor], receiver: int
    ) -> torch.Tensor | None:
        """A dealer-computed value sent in full to ``receiver`` only (others get None)."""
        if self.pid is not None:
            return self._read(op, shape) if self.pid == receiver else None
        full = value()
        self._write(receiver, op, full)
        return full

    def party_seed_words(self, party: int, shape: Shape) -> torch.Tensor | None:
        """Words from party ``party``'s own dealer stream (e.g. its FSS root seeds): that party
        and the dealer draw them, every other party gets None and draws nothing, so all
        streams stay in step. No dealer traffic."""
        if not 0 <= party < self.n:
            raise ValueError(f"party_seed_words: party {party} outside 0..{self.n - 1}")
        if self.pid is not None and self.pid != party:
            return None
        self.elements += _numel(shape)
        return self._prgs[party].ring(shape)

    def mask_seeds(self) -> dict[int, bytes]:
        """Fresh seeds of data masks, one per owner, known to that owner and the dealer only.

        Each call derives new seeds (label ``mask/<k>/<owner>`` under the owner's dealer seed,
        HMAC-SHA256), so party and dealer agree without a message. Party role: ``{pid: seed}``;
        dealer role: every party's. No dealer traffic: the owner expands its block's mask A
        itself (by counter offset, any row range; :meth:`mpc.core.prg.PRG.ring_at`), where
        before the dealer sent it the whole block.
        """
        self._masks += 1
        return {p: derive_seed(s, f"mask/{self._masks}/{p}") for p, s in self._seeds.items()}

    def random_bits(self, shape: Shape) -> torch.Tensor:
        """XOR shares of uniform bit-sliced words (int64; dealer: the full words)."""
        return self._uniform(shape, torch.bitwise_xor)

    def _uniform(self, shape: Shape, combine: Callable[..., torch.Tensor]) -> torch.Tensor:
        """A party's seeded share; the dealer: every party's shares ``combine``-d (addition:
        additive shares; XOR: XOR shares)."""
        self.elements += _numel(shape)
        if self.pid is not None:
            return self._prgs[self.pid].ring(shape)
        prgs = self._prgs
        if self.n == 1:
            return prgs[0].ring(shape).clone()
        total = combine(prgs[0].ring(shape), prgs[1].ring(shape))
        for p in range(2, self.n):
            combine(total, prgs[p].ring(shape), out=total)
        return total

    def correlated_bits(
        self, op: str, shape: Shape, value: Callable[[], torch.Tensor], receiver: int = 0
    ) -> torch.Tensor:
        """XOR shares of dealer-computed bit-sliced words; only ``receiver`` gets a correction."""
        return self._correlated(op, shape, value, receiver, torch.bitwise_xor)

    def _correlated(
        self,
        op: str,
        shape: Shape,
        value: Callable[[], torch.Tensor],
        receiver: int,
        remove: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """A share of ``value`` for every party: the others' from their seeds, ``receiver``'s
        the correction ``remove``-ing theirs from the value (subtraction: additive shares;
        XOR: XOR shares)."""
        self.elements += _numel(shape)
        if self.pid is not None:
            if self.pid == receiver:
                return self._read(op, shape)
            return self._prgs[self.pid].ring(shape)
        full = value()
        if tuple(full.shape) != tuple(shape):
            raise ProtocolError(f"dealer: {op}: value shape {tuple(full.shape)} != {shape}")
        correction = full
        for p in range(self.n):
            if p != receiver:  # the first removal makes a new tensor: full stays intact
                correction = remove(correction, self._prgs[p].ring(shape))
        self._write(receiver, op, correction if correction is not full else full.clone())
        return full

    def _read(self, op: str, shape: Shape) -> torch.Tensor:
        if self._source is None:
            raise PreprocessingExhausted(f"P{self.pid}: {op}: no dealer connection")
        value = self._source.read(op, shape)
        self.received += value.numel() * value.element_size()
        return value

    def _write(self, to: int, op: str, value: torch.Tensor) -> None:
        if self._sink is None:
            raise PreprocessingExhausted(f"dealer: {op}: no connection to P{to}")
        self._sink.write(to, op, value)


def _numel(shape: Shape) -> int:
    count = 1
    for s in shape:
        count *= int(s)
    return count
