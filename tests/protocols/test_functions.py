"""Comparison, ReLU, sigmoid, exp, reciprocal, softmax and one training step against float64
references with explicit tolerances; uniformity of one party's view (simulation)."""

from __future__ import annotations

import pytest
import torch

from mpc.core import fixedpoint
from mpc.core.sharing import reconstruct
from mpc.net.transport import HEADER
from mpc.protocols import arith as protocols
from mpc.protocols import compare, functions, rowmax
from mpc.protocols.simulate import simulate
from tests.conftest import share_reals

PARTIES = (2, 3, 5)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n", PARTIES)
def test_relu_and_sign_bits_exact(n, prg):
    x = torch.randn(2000, generator=_gen(n), dtype=torch.float64) * 50
    res = simulate(n, lambda ctx, a: compare.relu(ctx, a), share_reals(x, n, prg))
    bits = reconstruct([r[1] for r in res])
    assert torch.equal(bits, (fixedpoint.encode(x) >= 0).long())
    got = fixedpoint.decode(reconstruct([r[0] for r in res]))
    assert torch.equal(got, fixedpoint.decode(fixedpoint.encode(x)).clamp(min=0))


@pytest.mark.parametrize("n", PARTIES)
def test_compare_fused_with_truncation(n, prg):
    """A product at 2f bits compared after truncation: bits exact away from the thresholds,
    products within 2 ulp, 4 rounds for every n (the truncation shares the first round)."""
    x = torch.randn(3000, generator=_gen(10 + n), dtype=torch.float64) * 6
    x = x[((x.unsqueeze(1) - torch.tensor([-2.0, 0.0, 0.75])).abs() > 1e-3).all(1)]
    x_2f = fixedpoint.encode(x) * (1 << 16)  # x at 2f fractional bits
    shares = [s.clone() for s in share_reals(x, n, prg)]
    shares = [s * (1 << 16) for s in shares]
    assert torch.equal(reconstruct(shares), x_2f)
    res = simulate(
        n,
        lambda ctx, a: compare.compare_thresholds(ctx, a, [-2.0, 0.0, 0.75], truncate_bits=16),
        shares,
    )
    bits = reconstruct([r[0] for r in res])
    want = (x.unsqueeze(0) >= torch.tensor([-2.0, 0.0, 0.75]).unsqueeze(1)).long()
    assert torch.equal(bits, want)
    prods = fixedpoint.decode(reconstruct([r[1] for r in res]))
    assert float((prods - want * x.unsqueeze(0)).abs().max()) <= 2 * 2.0**-16
    assert res.stats[0].rounds == 4


@pytest.mark.parametrize("n", PARTIES)
def test_sigmoid_max_error(n, prg):
    x = torch.linspace(-10, 10, 4001, dtype=torch.float64)
    res = simulate(n, lambda ctx, a: functions.sigmoid(ctx, a), share_reals(x, n, prg))
    err = (fixedpoint.decode(reconstruct(res)) - torch.sigmoid(x)).abs().max()
    assert float(err) <= 3.5e-3


@pytest.mark.parametrize("n", (2, 3))
def test_exp_reciprocal_softmax(n, prg):
    x = torch.linspace(-16, 0, 8001, dtype=torch.float64)
    res = simulate(n, lambda ctx, a: functions.exp(ctx, a), share_reals(x, n, prg))
    assert float((fixedpoint.decode(reconstruct(res)) - torch.exp(x)).abs().max()) <= 1.2e-3
    s = torch.linspace(1, 10, 801, dtype=torch.float64)
    res = simulate(n, lambda ctx, a: functions.reciprocal(ctx, a, 10.0), share_reals(s, n, prg))
    got = fixedpoint.decode(reconstruct(res))
    assert float((got - 1 / s).abs().max()) <= 1e-4
    z = torch.randn(32, 10, generator=_gen(5), dtype=torch.float64) * 3
    res = simulate(n, lambda ctx, a: functions.softmax_rows(ctx, a), share_reals(z, n, prg))
    got = fixedpoint.decode(reconstruct(res))
    assert float((got - torch.softmax(z, 1)).abs().max()) <= 5e-3


@pytest.mark.parametrize("n", (2, 3))
@pytest.mark.parametrize("comparison", ("bitwise", "fss"))
def test_reciprocal_spline_alone(n, comparison, prg):
    """iterations=0: the finer spline alone, relative error < 1e-3 on [1, 10] (+ rounding), in
    one comparison round set (+ the truncation round if n > 2); ``input_bits`` takes s at
    2f bits and truncates it inside the comparison's opening, at no extra round."""
    s = torch.linspace(1, 10, 2001, dtype=torch.float64)
    sets = 1 if comparison == "fss" else 4
    for input_bits in (0, 16):
        x = share_reals(s * 2.0**input_bits, n, prg)
        res = simulate(n, lambda ctx, a, b=input_bits: functions.reciprocal(
            ctx, a, 10.0, 0, input_bits=b), x, comparison=comparison)
        got = fixedpoint.decode(reconstruct(res))
        # the spline's 1e-3 plus fixed-point rounding (< 2e-4 relative at s = 10)
        assert float(((got - 1 / s) * s).abs().max()) <= 1.2e-3
        assert res.stats[0].rounds == sets + (n > 2)
    with pytest.raises(ValueError, match="iterations=0"):
        simulate(n, lambda ctx, a: functions.reciprocal(ctx, a, 10.0, 1, input_bits=16),
                 share_reals(s, n, prg))


@pytest.mark.parametrize("n", PARTIES)
def test_row_max_exact_with_ties(n, prg):
    """The row max is exactly the largest fixed-point value of every row, ties included (the
    all-pairs form up to 16 columns: a comparison without its B2A round (3), the AND of each
    element's wins (1 round up to 11 columns, 2 beyond; none for 2) and one round for B2A and
    the product; the tournament beyond 16 columns: one comparison round set per level)."""
    gen = _gen(70 + n)
    for k, rounds in ((1, 0), (2, 4), (3, 5), (10, 5), (11, 5), (12, 6), (16, 6), (17, 20)):
        z = torch.randn(48, k, generator=gen, dtype=torch.float64) * 3
        z[:8, k // 2] = z[:8, k - 1] = 9.5  # a tie for the maximum
        z[8:12] = -1.25  # whole rows equal
        res = simulate(n, lambda ctx, a: rowmax.row_max(ctx, a), share_reals(z, n, prg))
        assert torch.equal(reconstruct(res), fixedpoint.encode(z).max(1).values), k
        assert res.stats[0].rounds == rounds, k


@pytest.mark.parametrize("n", (2, 3, 5))
@pytest.mark.parametrize("comparison", ("bitwise", "fss"))
def test_softmax_of_untruncated_logits(n, comparison, prg):
    """Logits at 2f bits (``input_bits=f``): the row max truncates them at no extra round
    (locally for 2 parties, inside its openings for 3: the truncated logits' maximum) and softmax
    matches float64 as from truncated logits, in the same rounds as from f-bit logits."""
    z = torch.randn(32, 9, generator=_gen(7), dtype=torch.float64) * 3
    wide = share_reals(z * 2.0**16, n, prg)  # 2f fractional bits
    res = simulate(n, lambda ctx, a: rowmax.row_max(ctx, a, input_bits=16), wide,
                   comparison=comparison)
    got = fixedpoint.decode(reconstruct(res))
    assert float((got - z.max(1).values).abs().max()) <= 3 * 2.0**-16
    rounds = {}
    for bits in (0, 16):
        res = simulate(n, lambda ctx, a, b=bits: functions.softmax_rows(ctx, a, input_bits=b),
                       share_reals(z * 2.0**bits, n, prg), comparison=comparison)
        got = fixedpoint.decode(reconstruct(res))
        assert float((got - torch.softmax(z, 1)).abs().max()) <= 5e-3
        rounds[bits] = res.stats[0].rounds
    assert rounds[16] == rounds[0]


@pytest.mark.parametrize("n", (2, 3))
def test_truncate_then_mul_broadcasts(n, prg):
    """x (B, 1) times y (B, K): the product of the broadcast shape, 1 round; n > 2 opens the
    truncation of x at x's size (3B + BK words per peer, not 4BK)."""
    x = torch.randn(64, 1, generator=_gen(50), dtype=torch.float64) * 4
    y = torch.randn(64, 10, generator=_gen(51), dtype=torch.float64)
    res = simulate(
        n,
        lambda ctx, a, b: protocols.truncate_then_mul(ctx, a, 3, b),
        share_reals(x, n, prg),
        share_reals(y, n, prg),
    )
    prod = reconstruct([r[0] for r in res]).double() / 2.0**32
    assert prod.shape == (64, 10)
    assert float((prod - x / 8 * y).abs().max()) <= 2 * (y.abs().max() + 1) * 2.0**-16
    assert res.stats[0].rounds == 1
    if n > 2:
        words = 3 * 64 + 64 * 10  # one message per peer
        assert res.stats[0].bytes_sent == (n - 1) * (8 * words + HEADER.size)


@pytest.mark.parametrize("n", PARTIES)
def test_square_and_fused_truncation(n, prg):
    """square: exact ring square; truncate_then_square: (x / 2^k + offset)^2 within 2 ulp of
    the truncated value, 1 round for every n (the truncation's opening carries the operand)."""
    x = torch.randn(5000, generator=_gen(30 + n), dtype=torch.float64) * 4
    enc = fixedpoint.encode(x)
    res = simulate(
        n, lambda ctx, a: protocols.square(ctx, a, scaled=False), share_reals(x, n, prg)
    )
    assert torch.equal(reconstruct(res), enc * enc)
    res = simulate(
        n,
        lambda ctx, a: protocols.truncate_then_square(ctx, a, 3, 1 << 16),
        share_reals(x, n, prg),
    )
    y = x / 8 + 1
    got = reconstruct(res).double() / 2.0**32
    assert float((got - y * y).abs().max()) <= 2 * (2 * y.abs().max() + 1) * 2.0**-16
    assert res.stats[0].rounds == 1
    res = simulate(n, lambda ctx, a: functions.exp(ctx, a), share_reals(-x.abs(), n, prg))
    assert res.stats[0].rounds == (4 if n == 2 else 5)  # one comparison round set (+ trunc)
    w = torch.randn(5000, generator=_gen(40 + n), dtype=torch.float64)
    res = simulate(
        n,
        lambda ctx, a, b: protocols.truncate_then_mul(ctx, a, 3, b, 1 << 16),
        share_reals(x, n, prg),
        share_reals(w, n, prg),
    )
    prod = reconstruct([r[0] for r in res]).double() / 2.0**32
    xt = fixedpoint.decode(reconstruct([r[1] for r in res]))
    assert float((xt - y).abs().max()) <= 2 * 2.0**-16
    assert float((prod - y * w).abs().max()) <= 2 * (w.abs().max() + 1) * 2.0**-16
    assert res.stats[0].rounds == 1
    s = torch.linspace(1, 10, 101, dtype=torch.float64)
    res = simulate(n, lambda ctx, a: functions.reciprocal(ctx, a, 10.0), share_reals(s, n, prg))
    assert res.stats[0].rounds == (6 if n == 2 else 7)  # spline + one Newton step (+ trunc)


def test_truncation_million_values_within_two_ulp(prg):
    """Documented range for 2-party local truncation: |x| < 2^36 (failure prob 2^-27)."""
    raw = torch.randint(-(2**36), 2**36, (1_000_000,), generator=_gen(9), dtype=torch.int64)
    from mpc.core.sharing import share

    for n in (2, 3):
        res = simulate(n, lambda ctx, a: protocols.truncate(ctx, a), share(raw, n, prg))
        assert int((reconstruct(res) - (raw >> 16)).abs().max()) <= 2


@pytest.mark.parametrize("n", (2, 3))
def test_one_party_view_is_uniform(n, prg):
    """Party 1's shares and every masked value it sees look uniform, whatever the secret."""
    seen: list[torch.Tensor] = []
    x = torch.full((20000,), 1.5, dtype=torch.float64)  # a constant secret: worst case

    def run(ctx, a, b):
        if ctx.pid == 1:
            original = ctx.channel.exchange

            def spy(op, outgoing, incoming):
                got = original(op, outgoing, incoming)
                if op.startswith("open/"):
                    for tensors in got.values():
                        seen.extend(t.reshape(-1) for t in tensors)
                return got

            ctx.channel.exchange = spy
        return protocols.mul(ctx, a, b)

    res = simulate(n, run, share_reals(x, n, prg), share_reals(x, n, prg))
    values = torch.cat([*seen, res[1].reshape(-1)])
    for bit in (0, 1, 31, 62, 63):
        frac = float(((values >> bit) & 1).double().mean())
        assert abs(frac - 0.5) < 0.02, f"bit {bit} biased: {frac}"
