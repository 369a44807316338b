"""The FSS comparison backend (mpc.protocols.fsscompare) over the in-process simulation:
bits and products exact against the plaintext rule (bit 30 of (x' - t) mod 2^31 is 0) at
random points and the domain edges, with and without truncation, n = 2, 3, 5; one round;
dealer bytes; the same outputs as the bitwise backend; ReLU, sigmoid, row max and the range
check on top of it."""

from __future__ import annotations

import functools
import importlib

import pytest
import torch

from mpc.core import fixedpoint
from mpc.core.errors import NumericError
from mpc.core.sharing import reconstruct, share
from mpc.protocols import compare, fsscompare, functions, rowmax
from mpc.protocols.context import PartyContext
from mpc.protocols.rangecheck import RangeGuard
from mpc.protocols.simulate import simulate
from tests.conftest import share_reals

PARTIES = (2, 3, 5)
THRESHOLDS = [-2.0, 0.0, 0.75, 3.3, -7.123, 1e-5]  # any reals: no 2^-2 grid needed
F = 16


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rule(xp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """[x' >= t] as the comparison defines it for every x': bit 30 of (x' - t) mod 2^31 is 0."""
    return ((((xp.unsqueeze(0) - t.unsqueeze(1)) >> 30) & 1) == 0).long()


def _inputs(count: int, seed: int) -> torch.Tensor:
    """x' values: random (inside and far outside the domain) plus, for every threshold, the
    edges t, t -+ 1 ulp, t -+ (2^30 - 1), t -+ 2^30, t -+ (2^30 + 1), t + 2^31 -+ 1."""
    gen = _gen(seed)
    t = fixedpoint.encode(THRESHOLDS)
    offsets = torch.tensor(
        [0, 1, -1, 2**30 - 1, -(2**30 - 1), 2**30, -(2**30), 2**30 + 1, -(2**30) - 1]
        + [2**31 - 1, 2**31, 2**31 + 1, -(2**31)]
    )
    edges = (t.unsqueeze(1) + offsets.unsqueeze(0)).reshape(-1)
    inside = torch.randint(-(2**29), 2**29, (count // 2,), generator=gen)
    wide = torch.randint(-(2**44), 2**44, (count - count // 2,), generator=gen)
    return torch.cat([edges, inside, wide])


def _run(n, shares, *, comparison="fss", **kw):  # noqa: ANN001, ANN202
    return simulate(
        n,
        lambda ctx, a: compare.compare_thresholds(ctx, a, THRESHOLDS, **kw),
        shares,
        comparison=comparison,
    )


@pytest.mark.parametrize("n", PARTIES)
def test_bits_and_products_exact(n, prg):
    """~10^4 comparisons: bits and b * x' exact in the ring, 1 round, the stated bytes."""
    xp = _inputs(1700, n)
    res = _run(n, share(xp, n, prg))
    bits = reconstruct([r[0] for r in res])
    prods = reconstruct([r[1] for r in res])
    t = fixedpoint.encode(THRESHOLDS)
    assert torch.equal(bits, _rule(xp, t))
    assert torch.equal(prods, bits * xp.unsqueeze(0))
    m = xp.numel()
    assert res.stats[0].rounds == 1
    assert res.stats[0].bytes_sent <= (n - 1) * (8 * m + 64)  # one word per peer + framing
    assert res.dealer_bytes == m * fsscompare.dealer_bytes_per_element(2)
    # without products: bits only, smaller keys
    res = _run(n, share(xp, n, prg), with_products=False)
    assert res[0][1] is None
    assert torch.equal(reconstruct([r[0] for r in res]), _rule(xp, t))
    assert res.dealer_bytes == m * fsscompare.dealer_bytes_per_element(1)


@pytest.mark.parametrize("n", (2, 3))
def test_keys_in_chunks(n, prg, monkeypatch):
    """Large batches take their keys in chunks after the opening (bounded memory): same
    results, still 1 round, the same dealer bytes."""
    monkeypatch.setattr(fsscompare, "_CHUNK_POINTS", 50)  # 8 elements per chunk of 6 thresholds
    xp = _inputs(300, 60 + n)
    res = _run(n, share(xp, n, prg), truncate_bits=0)
    bits = reconstruct([r[0] for r in res])
    assert torch.equal(bits, _rule(xp, fixedpoint.encode(THRESHOLDS)))
    assert torch.equal(reconstruct([r[1] for r in res]), bits * xp.unsqueeze(0))
    assert res.stats[0].rounds == 1
    assert res.dealer_bytes == xp.numel() * fsscompare.dealer_bytes_per_element(2)


def _local_truncation(shares: list[torch.Tensor], bits: int) -> torch.Tensor:
    """What SecureML's 2-party local truncation of these very shares yields."""
    return (shares[0] >> bits) + (-((-shares[1]) >> bits))


@pytest.mark.parametrize("n", PARTIES)
@pytest.mark.parametrize("exact", [False, True])
def test_truncation_then_compare_exact(n, exact, prg):
    """Input at f + 16 bits. n = 2 without ``exact_truncation``: local truncation, then the
    comparison (1 round); otherwise the exact truncation's opening is the masked value (1
    round in all). Bits and products are exact for the x' the truncation produced."""
    xp = _inputs(1500, 10 + n)
    low = torch.randint(0, 1 << F, xp.shape, generator=_gen(20 + n))
    x = xp * (1 << F) + low  # |x| < 2^61: the exact truncation is exact up to its carry
    shares = share(x, n, prg)
    res = _run(n, shares, truncate_bits=F, exact_truncation=exact)
    bits = reconstruct([r[0] for r in res])
    prods = reconstruct([r[1] for r in res])
    t = fixedpoint.encode(THRESHOLDS)
    if n == 2 and not exact:
        got = _local_truncation(shares, F)
        assert torch.equal(bits, _rule(got, t))
        assert torch.equal(prods, bits * got.unsqueeze(0))
    else:  # floor(x / 2^f) or one more (the carry), element by element
        fits = []
        for carry in (0, 1):
            cand = xp + carry
            fits.append(
                (bits == _rule(cand, t)).all(0) & (prods == bits * cand.unsqueeze(0)).all(0)
            )
        assert bool((fits[0] | fits[1]).all())
        # inputs on the 2^f grid have no carry: exact there
        grid = share(xp * (1 << F), n, prg)
        res_grid = _run(n, grid, truncate_bits=F, exact_truncation=exact)
        assert torch.equal(reconstruct([r[0] for r in res_grid]), _rule(xp, t))
        assert torch.equal(
            reconstruct([r[1] for r in res_grid]), _rule(xp, t) * xp.unsqueeze(0)
        )
        assert res.dealer_bytes == xp.numel() * fsscompare.dealer_bytes_per_element(3, True)
    assert res.stats[0].rounds == 1


@pytest.mark.parametrize("n", (2, 3))
def test_same_outputs_as_bitwise_backend(n, prg):
    """Thresholds on the bitwise backend's 2^-2 grid: both backends give the same bits and
    products on the same shares, also outside the domain (the range check's rule)."""
    ths = [-2.0, 0.0, 0.75]
    xp = torch.cat([_inputs(600, 30 + n), torch.randint(-(2**62), 2**62, (300,))])
    shares = share(xp, n, prg)
    outs = {}
    for mode in ("bitwise", "fss"):
        res = simulate(
            n, lambda ctx, a: compare.compare_thresholds(ctx, a, ths), shares, comparison=mode
        )
        outs[mode] = (reconstruct([r[0] for r in res]), reconstruct([r[1] for r in res]))
        assert res.stats[0].rounds == (4 if mode == "bitwise" else 1)
    assert torch.equal(outs["fss"][0], outs["bitwise"][0])
    assert torch.equal(outs["fss"][1], outs["bitwise"][1])


@pytest.mark.parametrize("n", PARTIES)
def test_relu_sigmoid_row_max(n, prg):
    """The functions on top of the comparison: the bitwise backend's tolerances, and their
    rounds: ReLU 1, sigmoid 1 (+1 truncation round for n > 2), row max 1 per tournament level
    (FSS keeps the tournament: all pairs would compare ~6 times the elements for K = 10)."""
    x = torch.randn(2000, generator=_gen(n), dtype=torch.float64) * 50
    res = simulate(
        n, lambda ctx, a: compare.relu(ctx, a), share_reals(x, n, prg), comparison="fss"
    )
    assert torch.equal(reconstruct([r[1] for r in res]), (fixedpoint.encode(x) >= 0).long())
    got = fixedpoint.decode(reconstruct([r[0] for r in res]))
    assert torch.equal(got, fixedpoint.decode(fixedpoint.encode(x)).clamp(min=0))
    assert res.stats[0].rounds == 1

    x = torch.linspace(-10, 10, 4001, dtype=torch.float64)
    res = simulate(
        n, lambda ctx, a: functions.sigmoid(ctx, a), share_reals(x, n, prg), comparison="fss"
    )
    err = (fixedpoint.decode(reconstruct(res)) - torch.sigmoid(x)).abs().max()
    assert float(err) <= 3.5e-3
    assert res.stats[0].rounds == (1 if n == 2 else 2)

    z = torch.randn(64, 10, generator=_gen(7 + n), dtype=torch.float64) * 3
    res = simulate(
        n, lambda ctx, a: rowmax.row_max(ctx, a), share_reals(z, n, prg), comparison="fss"
    )
    got = fixedpoint.decode(reconstruct(res))
    assert torch.equal(got, fixedpoint.decode(fixedpoint.encode(z)).max(1).values)
    assert res.stats[0].rounds == 4  # 10 -> 5 -> 3 -> 2 -> 1

    wide = torch.randn(8, 20, generator=_gen(9 + n), dtype=torch.float64) * 3
    res = simulate(
        n, lambda ctx, a: rowmax.row_max(ctx, a), share_reals(wide, n, prg), comparison="fss"
    )
    got = fixedpoint.decode(reconstruct(res))
    assert torch.equal(got, fixedpoint.decode(fixedpoint.encode(wide)).max(1).values)
    assert res.stats[0].rounds == 5  # 20 columns: the tournament, 20 -> 10 -> 5 -> 3 -> 2 -> 1


@pytest.mark.parametrize(("n", "rounds"), [(2, (14, 7)), (3, (15, 8))])
def test_softmax_rounds_drop(n, rounds, prg):
    """softmax_rows with FSS: 6 comparison round sets (4 tournament levels, the exp and 1/x
    splines) of 1 round, + softmax's product (+ the result's truncation if n > 2): 7 rounds;
    bitwise takes the all-pairs row max (a comparison stopped before its B2A round, 3 rounds;
    the AND of each element's wins, 1; B2A and product, 1) and the splines: 14 rounds for 2
    parties, 15 for 3."""
    z = torch.randn(32, 10, generator=_gen(5), dtype=torch.float64) * 3
    res = {
        mode: simulate(
            n, lambda ctx, a: functions.softmax_rows(ctx, a), share_reals(z, n, prg),
            comparison=mode,
        )
        for mode in ("bitwise", "fss")
    }
    for r in res.values():
        got = fixedpoint.decode(reconstruct(r))
        assert float((got - torch.softmax(z, 1)).abs().max()) <= 5e-3
    assert (res["bitwise"].stats[0].rounds, res["fss"].stats[0].rounds) == rounds


@pytest.fixture
def rangecheck_tests(monkeypatch):  # noqa: ANN001, ANN201
    """The range-check test module with its simulation switched to the FSS backend."""
    module = importlib.import_module("tests.protocols.test_rangecheck")
    monkeypatch.setattr(module, "simulate", functools.partial(simulate, comparison="fss"))
    return module


@pytest.mark.parametrize("n", (2, 3))
def test_range_check_with_fss(n, prg, rangecheck_tests):
    """The range check's soundness over the whole ring holds with the FSS backend (it relies
    on the bit-30 rule outside the comparison domain), and a check costs 7 rounds, not 13
    (its bulk comparison stays bitwise: one FSS key per recorded value would be too big)."""
    for bits in (14, 23, 29, 47):
        rangecheck_tests.test_range_check_exact_over_the_whole_ring(n, bits, prg)
    rangecheck_tests.test_wide_check(n, prg)
    good = torch.randint(-(2**28), 2**28, (50,), generator=_gen(1))
    bad = good.clone()
    bad[17] += 1 << 48

    def run(ctx, x):  # noqa: ANN001, ANN202
        guard = RangeGuard()
        guard.record(x, 29)
        guard.check(ctx, "epoch 1")
        return guard.checks

    res = simulate(n, run, share(good, n, prg), comparison="fss")
    assert list(res) == [1] * n
    assert res.stats[0].rounds == 7  # bitwise bulk comparison (4), zero test (2), the bit
    with pytest.raises(NumericError, match="range check"):
        simulate(n, run, share(bad, n, prg), comparison="fss")
    if n == 2:
        rangecheck_tests.test_wrapped_local_truncation_is_detected(prg)


def test_context_rejects_unknown_backend():
    with pytest.raises(ValueError, match="comparison must be one of"):
        PartyContext(0, 2, None, None, comparison="garbled")  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize("n", (2, 3))
def test_million_comparisons_exact(n, prg):
    """>= 10^6 random comparisons (200k elements x 6 thresholds) exact, incl. the edges."""
    xp = torch.cat(
        [
            _inputs(100_000, 40 + n),
            torch.randint(-(2**63), 2**63 - 1, (100_000,), generator=_gen(50 + n)),
        ]
    )
    res = _run(n, share(xp, n, prg))
    t = fixedpoint.encode(THRESHOLDS)
    bits = reconstruct([r[0] for r in res])
    assert bits.numel() >= 1_000_000
    assert torch.equal(bits, _rule(xp, t))
    assert torch.equal(reconstruct([r[1] for r in res]), bits * xp.unsqueeze(0))
