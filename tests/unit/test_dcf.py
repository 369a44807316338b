"""Distributed comparison function (mpc.core.dcf): exact reconstruction of beta * [z < alpha]
at random points and at the edges, key serialisation, shapes, errors, the uniformity of one
party's key material, and the dealer's per-party seed streams (Preprocessing.party_seed_words).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpc.core import dcf
from mpc.core.preprocessing import Preprocessing
from mpc.core.prg import PRG


def _keys(prg: PRG, m: int, payload: int, bits: int):
    alpha = prg.below((m,), bits)
    beta = prg.ring((m, payload))
    s0, s1 = prg.ring((m, 2)), prg.ring((m, 2))
    key = dcf.gen(alpha, beta, s0, s1, bits)
    return alpha, beta, s0, s1, key


def _edges(alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """alpha, alpha -+ 1, 0 and 2^bits - 1 for every key (clamped into the domain)."""
    top = (1 << bits) - 1
    rows = [
        alpha,
        (alpha - 1).clamp(min=0),
        torch.where(alpha == top, alpha, alpha + 1),  # no int64 overflow at 2^63 - 1
        torch.zeros_like(alpha),
        torch.full_like(alpha, top),
        (alpha - 2).clamp(min=0),
    ]
    return torch.stack(rows)


@pytest.mark.parametrize("bits", [1, 2, 7, 30, 31, 63])
@pytest.mark.parametrize("payload", [1, 2, 3, 5])
def test_dcf_exact(bits, payload):
    prg = PRG(bytes([bits, payload]) * 16)
    m = 300
    alpha, beta, s0, s1, key = _keys(prg, m, payload, bits)
    alpha[:4] = torch.tensor([0, 1, (1 << bits) - 1, (1 << bits) >> 1])  # domain corners
    key = dcf.gen(alpha, beta, s0, s1, bits)
    wire = dcf.DCFKey.from_words(key.words(), bits, payload)
    assert tuple(key.words().shape) == (m, dcf.key_words(bits, payload))
    points = torch.cat([_edges(alpha, bits), prg.below((10, m), bits)])
    y0 = dcf.evaluate(0, s0, wire, points)
    y1 = dcf.evaluate(1, s1, wire, points)
    assert tuple(y0.shape) == (points.shape[0], m, payload)
    want = (points < alpha).long().unsqueeze(-1) * beta.unsqueeze(0)
    assert torch.equal(y0 + y1, want)


def test_dcf_many_points_one_key():
    """All 2^8 points of a small domain under each key: the step function exactly."""
    prg = PRG(b"\x05" * 32)
    bits, m = 8, 64
    alpha, beta, s0, s1, key = _keys(prg, m, 2, bits)
    points = torch.arange(1 << bits).unsqueeze(1).expand(-1, m).contiguous()
    y = dcf.evaluate(0, s0, key, points) + dcf.evaluate(1, s1, key, points)
    assert torch.equal(y, (points < alpha).long().unsqueeze(-1) * beta)


@pytest.mark.parametrize("bits", [8, 30])
def test_points_sharing_a_prefix(bits):
    """Points c - t_k for nearby t_k (as the comparison gate asks): the top levels are walked
    once per prefix group, then split; exact, also when the points wrap around 0, when all
    points of a key coincide, and for points at both ends of the domain."""
    prg = PRG(bytes([bits]) * 32)
    m, top = 400, (1 << bits) - 1
    alpha, beta, s0, s1, key = _keys(prg, m, 3, bits)
    offsets = torch.tensor([0, 1, 2, 3, 5, 8, 13])
    c = prg.below((m,), bits)
    c[:6] = torch.tensor([0, 1, 4, top, top - 2, 7])  # wrap cases
    c[6:12] = alpha[6:12]  # alpha itself among the points
    z = (c.unsqueeze(0) - offsets.unsqueeze(1)) & top
    assert dcf._shared_levels(z.numpy().view("uint64"), bits) >= bits - 5
    cases = [
        z,
        alpha.unsqueeze(0).repeat(4, 1),
        torch.stack([torch.zeros_like(alpha), torch.full_like(alpha, top), alpha]),
    ]
    for points in cases:
        points = points.contiguous()
        y = dcf.evaluate(0, s0, key, points) + dcf.evaluate(1, s1, key, points)
        assert torch.equal(y, (points < alpha).long().unsqueeze(-1) * beta)


def test_key_size_and_words_round_trip():
    assert dcf.key_words(30, 2) == 123  # 984 bytes: 30 (16 + 16) + 8 + 16
    assert dcf.key_words(30, 1) == 92
    assert dcf.key_words(30, 3) == 154
    assert dcf.key_words(40, 1) == 40 * 3 + 2 + 1  # 80 control bits take two words
    prg = PRG(b"\x06" * 32)
    *_, key = _keys(prg, 17, 3, 40)
    back = dcf.DCFKey.from_words(key.words(), 40, 3)
    for a, b in ((key.seed, back.seed), (key.value, back.value), (key.control, back.control)):
        assert (a == b).all()
    assert (key.final == back.final).all()


def test_empty_inputs():
    prg = PRG(b"\x08" * 32)
    alpha, beta, s0, s1, key = _keys(prg, 0, 2, 30)
    assert tuple(key.words().shape) == (0, dcf.key_words(30, 2))
    assert tuple(dcf.evaluate(0, s0, key, torch.zeros((3, 0), dtype=torch.int64)).shape) == (
        3,
        0,
        2,
    )
    alpha, beta, s0, s1, key = _keys(prg, 5, 1, 30)
    assert tuple(dcf.evaluate(1, s1, key, torch.zeros((0, 5), dtype=torch.int64)).shape) == (
        0,
        5,
        1,
    )


def test_errors():
    prg = PRG(b"\x09" * 32)
    alpha, beta, s0, s1, key = _keys(prg, 4, 2, 10)
    with pytest.raises(ValueError, match="alpha outside"):
        dcf.gen(alpha + 1024, beta, s0, s1, 10)
    with pytest.raises(ValueError, match="beta"):
        dcf.gen(alpha, beta[:3], s0, s1, 10)
    with pytest.raises(ValueError, match="seed1"):
        dcf.gen(alpha, beta, s0, s1[:, :1], 10)
    with pytest.raises(ValueError, match="domain bits"):
        dcf.gen(alpha, beta, s0, s1, 0)
    with pytest.raises(ValueError, match="points outside"):
        dcf.evaluate(0, s0, key, torch.full((1, 4), 1024))
    with pytest.raises(ValueError, match="party"):
        dcf.evaluate(2, s0, key, torch.zeros((1, 4), dtype=torch.int64))
    with pytest.raises(ValueError, match="do not fit"):
        dcf.evaluate(0, s0, key, torch.zeros((1, 5), dtype=torch.int64))
    with pytest.raises(ValueError, match="key words"):
        dcf.DCFKey.from_words(key.words()[:, :-1], 10, 2)


def test_one_party_material_looks_uniform():
    """A fixed alpha and beta (worst case): the correction words' seed and value words, and
    one party's outputs, are balanced bit by bit, and nothing in them depends on alpha."""
    prg = PRG(b"\x0a" * 32)
    m, bits = 4000, 30
    for alpha_value in (0, (1 << bits) - 1, 12345):
        alpha = torch.full((m,), alpha_value)
        beta = torch.ones((m, 2), dtype=torch.int64)
        s0, s1 = prg.ring((m, 2)), prg.ring((m, 2))
        key = dcf.gen(alpha, beta, s0, s1, bits)
        y0 = dcf.evaluate(0, s0, key, torch.full((1, m), 777))
        seeds = torch.from_numpy(key.seed.view("int64")).reshape(-1)
        values = torch.from_numpy(key.value.view("int64")).reshape(-1)
        for name, words, lowest in (("seed", seeds, 1), ("value", values, 0), ("out", y0, 0)):
            for bit in (lowest, 17, 40, 63):
                frac = float(((words.reshape(-1) >> bit) & 1).double().mean())
                assert abs(frac - 0.5) < 0.02, (name, alpha_value, bit, frac)
        ctl = torch.from_numpy(key.control.view("int64")).double().mean()
        assert abs(float(ctl) - 0.5) < 0.02


def test_party_seed_words_keep_streams_in_step():
    """Party p and the dealer draw the same root seeds from p's stream; other parties draw
    nothing, and everybody's later material still matches the dealer's."""
    n = 3
    seeds = {p: bytes([p + 1]) * 32 for p in range(n)}

    class Sink:
        def write(self, to, op, value):  # noqa: ANN001, ANN201
            raise AssertionError("no dealer traffic expected")

    dealer = Preprocessing.for_dealer(n, seeds, Sink())
    parties = [Preprocessing.for_party(n, p, seeds[p], None) for p in range(n)]  # type: ignore[arg-type]
    full = dealer.party_seed_words(0, (5, 2))
    got = [pre.party_seed_words(0, (5, 2)) for pre in parties]
    assert torch.equal(got[0], full)
    assert got[1] is None and got[2] is None
    r = dealer.random((7,))
    assert torch.equal(sum(pre.random((7,)) for pre in parties), r)
    with pytest.raises(ValueError, match="outside"):
        parties[0].party_seed_words(3, (1,))


def test_shared_levels_matches_definition():
    """The closed form (k <= 52) and the binary search (k > 52) give the most top levels d
    such that every point of a key has the d-bit prefix of its smallest or largest point."""
    rng = np.random.default_rng(7)
    for k in (1, 2, 7, 30, 52, 53, 63):
        for _ in range(40):
            p, m = int(rng.integers(1, 12)), int(rng.integers(1, 6))
            top = np.uint64((1 << k) - 1)
            c = rng.integers(0, 1 << min(k, 62), size=(1, m), dtype=np.uint64)
            step = rng.integers(0, 1 << max(1, k // 2), size=(p, 1), dtype=np.uint64)
            z = (c - step) & top if rng.random() < 0.7 else rng.integers(
                0, 1 << min(k, 62), size=(p, m), dtype=np.uint64)
            low, high = z.min(0), z.max(0)

            def fits(d: int, k: int = k, z: np.ndarray = z, low: np.ndarray = low,
                     high: np.ndarray = high) -> bool:
                s = np.uint64(k - d)
                return bool((((z >> s) == (low >> s)) | ((z >> s) == (high >> s))).all())

            want = max(d for d in range(k + 1) if fits(d))
            assert dcf._shared_levels(z, k) == want
