"""Known-answer and round-trip tests of the pure modules: ring, prg, fixedpoint, sharing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpc.core import fixedpoint, ring
from mpc.core.errors import EncodingError
from mpc.core.prg import PRG, derive_seed
from mpc.core.sharing import reconstruct, share, zero_share

SEED = b"\x01" * 32


def test_ring_wraps_and_limb_matmul_is_exact() -> None:
    big = torch.tensor([2**63 - 1], dtype=torch.int64)
    assert int(big + 1) == -(2**63)  # Z_2^64 wraparound
    a = PRG(SEED).ring((9, 40))
    b = PRG(derive_seed(SEED, "b")).ring((40, 7))
    assert torch.equal(ring.matmul_limbs(a, b), ring.matmul_int64(a, b))
    assert ring.matmul_method("cpu") == "int64"


def test_ring_shifts_and_unsigned_compare() -> None:
    x = torch.tensor([-1, 5, -(2**63)], dtype=torch.int64)
    assert ring.rshift_logical(x, 60).tolist() == [15, 0, 8]
    assert ring.rshift_arith(x, 1).tolist() == [-1, 2, -(2**62)]
    assert ring.unsigned_lt(torch.tensor([1, -1]), torch.tensor([-1, 1])).tolist() == [True, False]


def test_prg_is_deterministic_and_seeds_differ() -> None:
    assert torch.equal(PRG(SEED).ring((100,)), PRG(SEED).ring((100,)))
    assert not torch.equal(PRG(SEED).ring((100,)), PRG(derive_seed(SEED, "x")).ring((100,)))
    bits = PRG(SEED).below((100_000,), 8)
    assert int(bits.min()) >= 0 and int(bits.max()) < 256
    with pytest.raises(ValueError):
        PRG(b"short")


def test_fixedpoint_round_trip_and_range() -> None:
    values = torch.linspace(-1000, 1000, 2001, dtype=torch.float64)
    assert float((fixedpoint.decode(fixedpoint.encode(values)) - values).abs().max()) <= 2**-17
    assert int(fixedpoint.encode(1.0)) == 1 << 16
    with pytest.raises(EncodingError):
        fixedpoint.encode([float("nan")])
    with pytest.raises(EncodingError):
        fixedpoint.encode([2.0**31])


def test_fixedpoint_encode_matches_round_half_even_and_names_bad_cells() -> None:
    """Arrays encode exactly as round(v * 2^16) with ties to even (torch.round's rule); NaN,
    both infinities and either side of the range raise, naming the shape, never a value."""
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.standard_normal(5000) * 1000,
                             np.array([0.5, 1.5, 2.5, -0.5, -1.5]) / 2**16,
                             np.array([2.0**31 - 2**-16, -(2.0**31) + 2**-16])])
    want = torch.round(torch.as_tensor(values) * 2**16).to(torch.int64)
    assert torch.equal(fixedpoint.encode(values), want)
    assert fixedpoint.encode(np.zeros((0, 3))).shape == (0, 3)
    for bad, why in ((np.nan, "NaN or inf"), (np.inf, "NaN or inf"), (-np.inf, "NaN or inf"),
                     (2.0**31, "range"), (-(2.0**31), "range")):
        cells = np.zeros((4, 2))
        cells[2, 1] = bad
        with pytest.raises(EncodingError, match=rf"shape \(4, 2\) .*{why}"):
            fixedpoint.encode(cells, what="features")


@pytest.mark.parametrize("n", (2, 3, 5))
def test_share_reconstruct_and_zero_share(n: int) -> None:
    x = PRG(SEED).ring((50,))
    shares = share(x, n, PRG(derive_seed(SEED, "share")))
    assert torch.equal(reconstruct(shares), x)
    # pairwise PRGs: party i and j hold the same generator for their pair
    pair_seed = {(i, j): derive_seed(SEED, f"{i}/{j}") for i in range(n) for j in range(i + 1, n)}
    zs = [
        zero_share(p, n, {q: PRG(pair_seed[(min(p, q), max(p, q))]) for q in range(n) if q != p},
                   (50,))
        for p in range(n)
    ]
    assert torch.equal(reconstruct(zs), torch.zeros(50, dtype=torch.int64))
    assert not torch.equal(zs[0], torch.zeros(50, dtype=torch.int64))


def test_bit_slicing_round_trip() -> None:
    from mpc.core.bits import packed_words, slice_bits, unslice_bits

    x = PRG(SEED).ring((3, 130))  # 130 values: 3 words per row, the last one padded
    sliced = slice_bits(x, 0, 64)
    assert sliced.shape == (64, 3 * packed_words(130))
    for j in (0, 1, 31, 62, 63):
        bits = unslice_bits(sliced[j].reshape(3, -1), 130)
        assert torch.equal(bits, (x >> j) & 1)
    high = slice_bits(x, 40, 5)
    assert torch.equal(high, sliced[40:45])


@pytest.mark.parametrize(("rows", "n", "lo", "count"),
                         [(1, 8192, 0, 64), (3, 5000, 14, 17), (2, 4097, 3, 30), (4, 4100, 61, 3)])
def test_wide_bit_slicing_matches_the_byte_path(rows: int, n: int, lo: int, count: int) -> None:
    """From WIDE_SLICE values on, slice_bits transposes 8 x 8 bit matrices: the same words as
    the byte path, pad bits (zero) included, for any start bit and count."""
    from mpc.core import bits

    x = PRG(SEED).ring((rows, n))
    assert rows * n >= bits.WIDE_SLICE
    wide = bits.slice_bits(x, lo, count)
    assert torch.equal(wide, bits._slice_wide(x, lo, count))
    small = torch.cat([bits.slice_bits(x[r : r + 1, c : c + 64], lo, count)
                       for r in range(rows) for c in range(0, n, 64)], dim=1)
    assert torch.equal(wide, small.reshape(count, -1))
    for j in (0, count // 2, count - 1):
        got = bits.unslice_bits(wide[j].reshape(rows, -1), n)
        assert torch.equal(got, (x >> (lo + j)) & 1)


def test_prg_buffered_draws_follow_the_aes_ctr_keystream() -> None:
    """Small draws come from keystream produced ahead, large ones directly; either way the
    sequence is exactly AES-256-CTR from counter 0, whatever the mix of sizes."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    enc = Cipher(algorithms.AES(SEED), modes.CTR(b"\x00" * 16)).encryptor()
    prg = PRG(SEED)
    sizes = [1, 3, 64, 1000, 4095, 5000, 9000, 20000, 7, 8191, 2, 4096]
    for n in sizes * 3:
        want = torch.frombuffer(bytearray(enc.update(bytes(8 * n))), dtype=torch.int64)
        assert torch.equal(prg.ring((n,)), want)
    assert prg.bytes(16) == enc.update(bytes(16))


@pytest.mark.parametrize("n", [2, 3])
def test_nibble_compare_from_mask_monomials(n: int) -> None:
    """Local nibble comparison ([a < r], [a == r]) from XOR shares of the r-monomials."""
    from mpc.core.bits import slice_bits, unslice_bits
    from mpc.protocols import gf2

    prg = PRG(SEED)
    count = 300
    a = prg.below((count,), 16)
    r = prg.below((count,), 16)
    mono = gf2.mask_monomials(slice_bits(r, 0, 16))
    shares = [prg.ring(tuple(mono.shape)) for _ in range(n - 1)]
    first = mono.clone()
    for s in shares:
        first ^= s
    g = torch.zeros(4, mono.shape[-1], dtype=torch.int64)
    p = g.clone()
    for pid, share_ in enumerate([first, *shares]):
        g_p, p_p = gf2.nibble_compare(slice_bits(a, 0, 16), gf2.mask_tables(pid, share_))
        g ^= g_p
        p ^= p_p
    for j in range(4):
        a_j, r_j = (a >> 4 * j) & 15, (r >> 4 * j) & 15
        assert torch.equal(unslice_bits(g[j : j + 1], count)[0], (a_j < r_j).long())
        assert torch.equal(unslice_bits(p[j : j + 1], count)[0], (a_j == r_j).long())


@pytest.mark.parametrize("n", [2, 3])
def test_and_products_match_plaintext(n: int) -> None:
    """Multi-factor AND in one round: each product equals the AND of the opened inputs."""
    from mpc.protocols import gf2
    from mpc.protocols.simulate import simulate

    prg = PRG(SEED)
    xs = [prg.ring((5,)) for _ in range(5)]
    sets = [(0, 1), (1, 2, 3), (0, 2, 3, 4), (4,)]
    shares = []
    for x in xs:
        parts = [prg.ring((5,)) for _ in range(n - 1)]
        first = x.clone()
        for part in parts:
            first ^= part
        shares.append([first, *parts])
    per_party = [[shares[i][p] for i in range(5)] for p in range(n)]
    res = simulate(n, lambda ctx, v: gf2.and_products(ctx, v, sets, "test"), per_party)
    for k, s in enumerate(sets):
        got = res[0][k].clone()
        for p in range(1, n):
            got ^= res[p][k]
        want = xs[s[0]].clone()
        for i in s[1:]:
            want &= xs[i]
        assert torch.equal(got, want)
    assert res.stats[0].rounds == 1


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize(("factors", "fan_in", "rounds"), [(1, 10, 0), (9, 10, 1), (10, 10, 1),
                                                           (13, 4, 2), (15, 8, 2), (17, 2, 5)])
def test_and_all_matches_plaintext(n: int, factors: int, fan_in: int, rounds: int) -> None:
    """The AND of many factors, in ceil(log_fan_in m) rounds of multi-factor ANDs (groups
    padded with the constant 1); words mostly ones, so that the products are not all zero."""
    from mpc.protocols import gf2
    from mpc.protocols.simulate import simulate

    prg = PRG(SEED)
    xs = [prg.ring((7,)) | prg.ring((7,)) | prg.ring((7,)) for _ in range(factors)]
    per_party: list[list[torch.Tensor]] = [[] for _ in range(n)]
    for x in xs:
        parts = [prg.ring((7,)) for _ in range(n - 1)]
        first = x.clone()
        for part in parts:
            first ^= part
        for p, share_ in enumerate([first, *parts]):
            per_party[p].append(share_)
    res = simulate(n, lambda ctx, v: gf2.and_all(ctx, v, "test", fan_in), per_party)
    got = res[0].clone()
    for p in range(1, n):
        got ^= res[p]
    want = xs[0].clone()
    for x in xs[1:]:
        want &= x
    assert torch.equal(got, want)
    assert bool(want.ne(0).any())
    assert res.stats[0].rounds == rounds


def test_and_all_refuses_bad_fan_in_and_no_factors() -> None:
    from mpc.protocols import gf2
    from mpc.protocols.simulate import simulate

    one = [torch.zeros(3, dtype=torch.int64)]
    with pytest.raises(ValueError, match="fan-in 11 outside"):
        simulate(2, lambda ctx: gf2.and_all(ctx, one, "test", 11))
    with pytest.raises(ValueError, match="no factors"):
        simulate(2, lambda ctx: gf2.and_all(ctx, [], "test"))


def test_and_products_refuses_more_inputs_than_its_table_holds() -> None:
    from mpc.protocols import gf2

    with pytest.raises(ValueError, match="11 inputs, at most 10"):
        gf2._plan((tuple(range(6)), tuple(range(5, 11))))


@pytest.mark.parametrize("pid", [0, 1])
def test_mask_tables_dense_and_butterfly_agree(pid: int) -> None:
    """The two evaluations of the nibble tables (small: ANF matrices; large: butterflies)."""
    from mpc.protocols import gf2

    mono = PRG(SEED).ring((15, 4, 37))
    assert torch.equal(
        gf2.mask_tables(pid, mono, dense=True), gf2.mask_tables(pid, mono, dense=False)
    )
