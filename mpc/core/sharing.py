"""Additive secret sharing over Z_2^64 as plain functions on tensors.

``x = x_0 + x_1 + ... + x_{n-1} mod 2^64``. Shares ``x_1..x_{n-1}`` are uniform PRG output and
``x_0`` is the difference, so any ``n - 1`` shares are independent of ``x`` (information-
theoretic hiding). Nothing here sends anything; see ``protocols`` for the networked versions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mpc.core.prg import PRG, derive_seed

__all__ = ["share", "reconstruct", "zero_share", "pair_prgs"]


def share(x: torch.Tensor, n: int, prg: PRG) -> list[torch.Tensor]:
    """Split ring tensor ``x`` into ``n`` additive shares using randomness from ``prg``."""
    if n < 1:
        raise ValueError(f"share: need n >= 1 parties, got {n}")
    others = [prg.ring(x.shape) for _ in range(n - 1)]
    first = x.clone()
    for s in others:
        first -= s
    return [first, *others]


def reconstruct(shares: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum additive shares modulo 2^64."""
    if not shares:
        raise ValueError("reconstruct: no shares given")
    out = shares[0].clone()
    for s in shares[1:]:
        if s.shape != out.shape:
            raise ValueError(
                f"reconstruct: share shapes differ: {tuple(out.shape)} vs {tuple(s.shape)}"
            )
        out += s
    return out


def zero_share(
    pid: int, n: int, pair_prgs: dict[int, PRG], shape: tuple[int, ...]
) -> torch.Tensor:
    """This party's share of a fresh sharing of zero, with no communication.

    Each pair (i, j) holds a common PRG; party i adds the pair's draw, party j subtracts it, so
    the n results sum to zero while each looks uniform to the others.
    """
    out = torch.zeros(shape, dtype=torch.int64)
    for other in range(n):
        if other == pid:
            continue
        draw = pair_prgs[other].ring(shape)
        if pid < other:
            out += draw
        else:
            out -= draw
    return out


def pair_prgs(pid: int, pair_seeds: Mapping[int, bytes]) -> dict[int, PRG]:
    """This party's PRG for each pair (pid, q), from the pair's common seed.

    ``pair_seeds[q]`` is the one seed that ``pid`` and ``q`` share (in the processes, the
    lower pid draws it from OS entropy and sends it over their mutual-TLS link); both sides
    derive the same generator, labelled by the ordered pair, so :func:`zero_share` sums to zero.
    """
    return {
        q: PRG(derive_seed(seed, f"pair/{min(pid, q)}/{max(pid, q)}"))
        for q, seed in pair_seeds.items()
        if q != pid
    }
