"""Private set intersection (PSI) of the parties' row ids, for vertical partitions.

ECDH-PSI in the prime-order subgroup of Ed25519 ([Mea86], [HFH99]; the "DH-PSI" of [IKNPSSSY20]),
with a leader (pid 0) that combines pairwise results for n > 2 parties:

* Every party hashes each of its ids to the group, ``H(x) = from_uniform(BLAKE2b-256(x))``
  (libsodium's ``crypto_core_ed25519_from_uniform``, which maps to the prime-order subgroup),
  raises it to a per-run secret scalar ``k`` (64 bytes of OS entropy reduced mod the group
  order), and shuffles the list with OS entropy (``secrets.SystemRandom``).
* Round 0: the parties exchange their set sizes (leader <-> each follower).
* Round 1: the leader sends ``shuffle(H(x)^k0)`` to every follower; every follower sends
  ``shuffle(H(y)^kj)`` and its set size to the leader.
* Round 2: each follower returns the leader's list raised to its scalar, ``H(x)^(k0 kj)``, in
  the order received; the leader raises each follower's list to ``k0``. Equal doubly-blinded
  points are equal ids (DDH in the group: distinct ids give unrelated points).
* Round 3: the leader keeps the ids it shares with *every* follower and tells each follower the
  positions, in that follower's shuffled list, of the common ids; the follower maps them back
  through its own shuffle. Every party sorts its common rows by ascending id.

Rounds: 4. Bytes: the leader sends 32 B per own id to each follower plus 8 B per common id to
each follower; a follower sends 32 B per own id plus 32 B per leader id (plus frame headers and
two small control objects). Scalar multiplications: the leader ``m0 + sum(mj)``, follower j
``mj + m0``, each ~0.1 ms with libsodium; hashing to the group ~0.03 ms per id. No dealer
material: the dealer never sees ids or blinded ids.

Threat model: semi-honest parties, DDH in the Ed25519 prime-order subgroup, hash to the group
as a random oracle. Every party learns the intersection of all parties' id sets and its size,
plus every other party's set *size* (which the vertical hello announces anyway). For n = 2 that
is all. For n > 2 the leader (pid 0) additionally learns, for each follower j, which of its own
ids j holds (the pairwise intersections X0 & Xj, element by element) and hence their sizes;
followers learn nothing beyond the result. Followers never see each other's blinded sets.
A malicious party can deviate (e.g. send points it did not hash, or lie about the common
positions); this module checks well-formedness only (sizes, points libsodium accepts, no
duplicate points).

Not done here: reading files, policy defaults, reordering features (the caller applies
:attr:`PSIResult.rows`).

[Mea86] C. Meadows. A more efficient cryptographic matchmaking protocol for use in the absence
of a continuously available third party. IEEE S&P 1986.
[HFH99] B. Huberman, M. Franklin, T. Hogg. Enhancing privacy and trust in electronic
communities. ACM EC 1999.
[IKNPSSSY20] M. Ion et al. On deploying secure computing: private intersection-sum-with-
cardinality. IEEE EuroS&P 2020.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from nacl import bindings as sodium

from mpc.config.policy import RevealPolicy
from mpc.core.errors import ConfigError, ProtocolError
from mpc.net.transport import Channel

__all__ = ["PSIResult", "private_intersection", "hash_to_group", "POINT_BYTES", "ROUNDS"]

POINT_BYTES = 32
_WORDS = POINT_BYTES // 8  # a point travels as four int64 words
_PERSON = b"mpc.psi.id/v1"  # BLAKE2b personalisation: domain separation of the id hash
ROUNDS = 4  # sizes; blinded sets; doubly-blinded sets; common positions
_CHUNK = 4096  # ids per task when scalar multiplications run on several threads


@dataclass(frozen=True)
class PSIResult:
    """What one party learns: ``rows``, the indices into its own id array of the common ids in
    ascending id order, and the intersection ``size``; plus this run's cost as seen by it."""

    rows: np.ndarray
    size: int
    seconds: float
    rounds: int
    bytes_sent: int
    bytes_received: int


def _pmap(fn: Callable[[bytes], bytes], items: Sequence[bytes], workers: int) -> list[bytes]:
    """``[fn(x) for x in items]``, on ``workers`` threads in chunks (libsodium releases the
    GIL in its calls, so threads run the curve arithmetic in parallel)."""
    if workers <= 1 or len(items) <= _CHUNK:
        return [fn(x) for x in items]
    chunks = [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]
    with ThreadPoolExecutor(workers) as pool:
        parts = pool.map(lambda c: [fn(x) for x in c], chunks)
        return [p for part in parts for p in part]


def hash_to_group(ids: np.ndarray, workers: int = 1) -> list[bytes]:
    """Each int64 id as a point of the Ed25519 prime-order subgroup (32-byte encoding).

    The 8-byte little-endian id is hashed with BLAKE2b-256 under a fixed personalisation, then
    mapped with libsodium's ``crypto_core_ed25519_from_uniform`` (Elligator 2, cofactor
    cleared).
    """
    raw = np.ascontiguousarray(ids, dtype="<i8").tobytes()
    digests = [hashlib.blake2b(raw[i : i + 8], digest_size=32, person=_PERSON).digest()
               for i in range(0, len(raw), 8)]
    return _pmap(sodium.crypto_core_ed25519_from_uniform, digests, workers)


def _secret_scalar() -> bytes:
    """A uniform non-zero scalar mod the group order, from 64 bytes of OS entropy (PyNaCl does
    not bind ``crypto_core_ed25519_scalar_random``; reducing 512 uniform bits is within
    2^-250 of uniform)."""
    while True:
        k = sodium.crypto_core_ed25519_scalar_reduce(os.urandom(64))
        if any(k):
            return k


def _blind(k: bytes, points: Sequence[bytes], workers: int, who: str) -> list[bytes]:
    """``P^k`` for every point; a point libsodium rejects is a protocol error of ``who``."""
    def mul(p: bytes) -> bytes:
        return sodium.crypto_scalarmult_ed25519_noclamp(k, p)

    try:
        return _pmap(mul, points, workers)
    except (RuntimeError, ValueError, TypeError):  # nacl raises RuntimeError subclasses
        raise ProtocolError(f"PSI: {who} sent an invalid group element") from None


def _pack(points: Sequence[bytes]) -> torch.Tensor:
    buf = b"".join(points)
    return torch.from_numpy(np.frombuffer(buf, dtype="<i8").copy().reshape(-1, _WORDS))


def _unpack(t: torch.Tensor, who: str) -> list[bytes]:
    raw = t.numpy().astype("<i8", copy=False).tobytes()
    points = [raw[i : i + POINT_BYTES] for i in range(0, len(raw), POINT_BYTES)]
    if len(set(points)) != len(points):
        raise ProtocolError(f"PSI: {who} sent duplicate points (ids must be unique)")
    return points


def _shuffled(n: int) -> list[int]:
    order = list(range(n))
    secrets.SystemRandom().shuffle(order)
    return order


def private_intersection(
    channel: Channel,
    ids: np.ndarray,
    *,
    names: Sequence[str] = (),
    policy: RevealPolicy | None = None,
    workers: int | None = None,
) -> PSIResult:
    """Intersect the int64 ``ids`` of all parties on ``channel``; see the module docstring.

    Every party calls this with its own ids (unique; checked). Before anything is sent, the
    party checks that its reveal ``policy`` allows ``intersection`` to ``all`` (PolicyError
    otherwise) and afterwards records the reveal in its ledger. Rounds: 4; bytes: see module.
    """
    me, n = channel.pid, channel.n
    label = names[me] if names else f"P{me}"
    who = {p: (names[p] if names else f"P{p}") for p in range(n)}
    if policy is not None:
        policy.require("intersection", "all", "ids")
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if len(np.unique(ids)) != len(ids):
        raise ConfigError(f"{label}: duplicate ids (PSI needs each id once)")
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    start = time.perf_counter()
    before = channel.stats.snapshot()

    k = _secret_scalar()
    order = _shuffled(len(ids))  # position i of what we send is row order[i]
    points = hash_to_group(ids[order], workers)
    mine = _blind(k, points, workers, label)
    del points

    leader, followers = 0, [p for p in range(n) if p != 0]
    sizes: dict[int, int] = {}
    if me == leader:
        for p in followers:
            channel.send_json(p, "psi/size", {"size": len(ids)})
        for p in followers:
            sizes[p] = _size(channel.recv_json(p, "psi/size"), who[p])
        got = channel.exchange("psi/blinded", {p: [_pack(mine)] for p in followers},
                               {p: [(sizes[p], _WORDS)] for p in followers})
        # Our own points under every follower's scalar, in our order; theirs under ours.
        theirs = {p: _blind(k, _unpack(got[p][0], who[p]), workers, who[p]) for p in followers}
        back = channel.exchange("psi/double", {}, {p: [(len(ids), _WORDS)] for p in followers})
        common = np.ones(len(ids), dtype=bool)
        doubles: dict[int, list[bytes]] = {}
        where: dict[int, dict[bytes, int]] = {}
        for p in followers:
            doubles[p] = _unpack(back[p][0], who[p])
            where[p] = {pt: i for i, pt in enumerate(theirs[p])}
            common &= np.fromiter((pt in where[p] for pt in doubles[p]), bool, len(ids))
        keep = np.flatnonzero(common)
        size = len(keep)
        for p in followers:
            channel.send_json(p, "psi/result", {"size": size})
        channel.exchange("psi/positions", {
            p: [torch.tensor([where[p][doubles[p][i]] for i in keep], dtype=torch.int64)]
            for p in followers}, {})
        rows = np.asarray(order, dtype=np.int64)[keep]
    else:
        channel.send_json(leader, "psi/size", {"size": len(ids)})
        sizes[leader] = _size(channel.recv_json(leader, "psi/size"), who[leader])
        got = channel.exchange("psi/blinded", {leader: [_pack(mine)]},
                               {leader: [(sizes[leader], _WORDS)]})
        double = _blind(k, _unpack(got[leader][0], who[leader]), workers, who[leader])
        channel.exchange("psi/double", {leader: [_pack(double)]}, {})
        size = _size(channel.recv_json(leader, "psi/result"), who[leader])
        if size > len(ids):
            raise ProtocolError(f"PSI: {who[leader]} announced {size} common ids, "
                                f"{label} has {len(ids)}")
        pos = channel.exchange("psi/positions", {}, {leader: [(size,)]})[leader][0].numpy()
        if size and (pos.min() < 0 or pos.max() >= len(ids) or len(np.unique(pos)) != size):
            raise ProtocolError(f"PSI: {who[leader]} sent invalid positions")
        rows = np.asarray(order, dtype=np.int64)[pos]
    rows = rows[np.argsort(ids[rows], kind="stable")]
    if policy is not None:
        policy.authorize("intersection", "all", "ids", (size,))
    after = channel.stats.snapshot()
    return PSIResult(
        rows=rows,
        size=int(size),
        seconds=time.perf_counter() - start,
        rounds=ROUNDS,
        bytes_sent=int(after["bytes_sent"] - before["bytes_sent"]),
        bytes_received=int(after["bytes_received"] - before["bytes_received"]),
    )


def _size(msg: Any, who: str) -> int:
    value = msg.get("size") if isinstance(msg, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"PSI: malformed size from {who}")
    return value
