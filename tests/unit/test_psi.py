"""Tests for mpc.protocols.psi over the in-process channel: exact intersections for n = 2..4,
ascending
id order, policy refusal before any byte, bad peers, and the hash to the group."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from nacl import bindings as sodium

from mpc.config.datasets import common_rows
from mpc.config.policy import RevealPolicy, RevealRule
from mpc.config.scenario import RevealRule as Rule
from mpc.config.scenario import load_scenario
from mpc.core.errors import ConfigError, PolicyError, ProtocolError
from mpc.net.transport import local_channels, run_threads
from mpc.protocols.psi import ROUNDS, hash_to_group, private_intersection

ALLOW = (RevealRule("weights", "launcher"), RevealRule("intersection", "all"))


def sets(n: int, seed: int, common: int = 40, own: int = 15) -> list[np.ndarray]:
    """n shuffled id sets: ``common`` ids at every party, ``own`` ids at each party only, and
    for n > 2 a few ids at two parties only (which must not reach the intersection)."""
    rng = np.random.default_rng(seed)
    pool = rng.choice(10**15, size=common + n * own + n * 5, replace=False).astype(np.int64)
    shared, rest = pool[:common], pool[common:]
    out = []
    for i in range(n):
        mine = [shared, rest[i * own : (i + 1) * own]]
        pairs = rest[n * own :]
        if n > 2:  # ids held by parties i and i+1 only
            mine += [pairs[i * 5 : (i + 1) * 5], pairs[((i - 1) % n) * 5 : ((i - 1) % n + 1) * 5]]
        ids = np.concatenate(mine)
        out.append(ids[rng.permutation(len(ids))])
    return out


def run_psi(ids: list[np.ndarray], policies: list[RevealPolicy | None] | None = None,
            workers: int = 1):
    n = len(ids)
    chans = local_channels(n, timeout=20)
    names = [f"p{i}" for i in range(n)]
    pols = policies or [RevealPolicy(nm, ALLOW) for nm in names]

    def party(i: int):
        return lambda: private_intersection(chans[i], ids[i], names=names, policy=pols[i],
                                            workers=workers)

    return run_threads([party(i) for i in range(n)], timeout=60), chans, pols


@pytest.mark.parametrize("n", [2, 3, 4])
def test_intersection_is_exact_and_ascending(n: int) -> None:
    ids = sets(n, seed=n)
    results, chans, pols = run_psi(ids)
    truth = ids[0]
    for other in ids[1:]:
        truth = np.intersect1d(truth, other)
    assert len(truth) == 40
    expect_rows = common_rows(ids)
    for i, res in enumerate(results):
        assert res.size == len(truth)
        assert np.array_equal(ids[i][res.rows], truth)  # ascending ids, same at every party
        assert np.array_equal(res.rows, expect_rows[i])
        assert res.rounds == ROUNDS and res.bytes_sent > 0 and res.bytes_received > 0
        assert [(r.what, r.to, r.shape) for r in pols[i].ledger] == [
            ("intersection", "all", (len(truth),))]


def test_bytes_match_the_docstring() -> None:
    """Leader: 32 B per own id + 8 B per common id; follower: 32 B per own and per leader id;
    plus a 24-byte header per frame (leader 4, follower 3) and the small JSON objects."""
    ids = sets(2, seed=7)
    (lead, follow), _, _ = run_psi(ids)
    m0, m1, k = len(ids[0]), len(ids[1]), lead.size
    assert 32 * m0 + 8 * k + 4 * 24 < lead.bytes_sent <= 32 * m0 + 8 * k + 4 * 24 + 2 * 20
    assert 32 * (m0 + m1) + 3 * 24 < follow.bytes_sent <= 32 * (m0 + m1) + 3 * 24 + 20


def test_empty_and_full_intersections() -> None:
    a = np.arange(1, 30, dtype=np.int64)
    (r0, r1), _, _ = run_psi([a, a + 1000])
    assert r0.size == r1.size == 0 and len(r0.rows) == len(r1.rows) == 0
    (r0, r1), _, _ = run_psi([a[::-1].copy(), a])
    assert r0.size == 29 and np.array_equal(a[::-1][r0.rows], a) and np.array_equal(a[r1.rows], a)


def test_threads_give_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mpc.protocols.psi._CHUNK", 16)  # several chunks per thread pool
    ids = sets(2, seed=3, common=100, own=30)
    (r0, r1), _, _ = run_psi(ids, workers=3)
    assert r0.size == 100
    assert np.array_equal(ids[0][r0.rows], ids[1][r1.rows])


def test_policy_refuses_before_any_byte() -> None:
    ids = sets(2, seed=1)
    chans = local_channels(2, timeout=2)
    deny = RevealPolicy("p0", (RevealRule("weights", "launcher"),))
    with pytest.raises(PolicyError, match="intersection"):
        private_intersection(chans[0], ids[0], names=["p0", "p1"], policy=deny)
    assert chans[0].stats.bytes_sent == 0 and not deny.ledger
    assert chans[1]._box.queues[(0, 1)].empty()


def test_duplicate_ids_are_a_config_error_naming_the_party() -> None:
    chans = local_channels(2, timeout=2)
    with pytest.raises(ConfigError, match="p1: duplicate ids"):
        private_intersection(chans[1], np.array([5, 6, 5]), names=["p0", "p1"])
    assert chans[1].stats.bytes_sent == 0


def test_malformed_peer_points_are_protocol_errors() -> None:
    chans = local_channels(2, timeout=5)
    ids = np.arange(10, dtype=np.int64)

    def bad_leader() -> None:
        chans[0].send_json(1, "psi/size", {"size": 10})
        chans[0].recv_json(1, "psi/size")
        junk = torch.zeros(10, 4, dtype=torch.int64)  # the identity/non-canonical points
        chans[0].exchange("psi/blinded", {1: [junk]}, {1: [(10, 4)]})

    def follower() -> None:
        private_intersection(chans[1], ids, names=["p0", "p1"])

    with pytest.raises(ProtocolError, match="p0 sent"):
        run_threads([bad_leader, follower], timeout=20)


def test_hash_to_group_is_deterministic_and_in_the_subgroup() -> None:
    ids = np.array([0, 1, -5, 2**52], dtype=np.int64)
    pts = hash_to_group(ids)
    assert pts == hash_to_group(ids) and len(set(pts)) == 4
    assert all(sodium.crypto_core_ed25519_is_valid_point(p) for p in pts)


# --------------------------------------------------------------------------- scenario keys

def load(write_scenario: Callable[..., Path], extra: str = "", tables: str = ""):
    """A vertical scenario with ``label_party = "a"``, ``extra`` [data] lines and ``tables``."""
    return load_scenario(write_scenario(f'label_party = "a"\n{extra}', tables,
                                        partition="vertical", name="t"))


def test_align_defaults_and_default_policy(write_scenario: Callable[..., Path]) -> None:
    s = load(write_scenario)
    assert s.data.align == "psi"
    assert s.reveal.rules == (Rule("weights", "launcher"), Rule("intersection", "all"))
    s = load(write_scenario, 'align = "ordered"')
    assert s.data.align == "ordered" and s.reveal.rules == (Rule("weights", "launcher"),)
    # An explicit table replaces the default: without "intersection" PSI will be refused.
    s = load(write_scenario, tables='[reveal]\nallow = [{what = "weights", to = "launcher"}]')
    assert not s.reveal.allows("intersection", "all")
    h = load_scenario(write_scenario(partition="horizontal", name="t", file="h.toml"))
    assert h.data.align is None and h.reveal.rules == (Rule("weights", "launcher"),)


@pytest.mark.parametrize("extra, tables, fragment", [
    ('align = "sorted"', "", "'data.align' must be one of 'psi', 'ordered'"),
    ('align = "ordered"', '[reveal]\nallow = [{what = "intersection", to = "all"}]',
     "'reveal.allow.0.what'"),
    ("", '[reveal]\nallow = [{what = "intersection", to = "a"}]',
     "'reveal.allow.0.to' must be 'all'"),
])
def test_bad_align_and_intersection_rules(write_scenario: Callable[..., Path], extra: str,
                                          tables: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(write_scenario, extra, tables)
    assert fragment in str(exc.value) and "s.toml" in str(exc.value)


def test_align_is_vertical_only(write_scenario: Callable[..., Path]) -> None:
    path = write_scenario('align = "psi"', partition="horizontal", name="t", file="h.toml")
    with pytest.raises(ConfigError, match="'data.align' is only allowed for partition"):
        load_scenario(path)
