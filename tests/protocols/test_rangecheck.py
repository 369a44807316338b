"""Secure range checks over the whole ring, and detection of a wrapped local truncation."""

from __future__ import annotations

import pytest
import torch

from mpc.core.errors import NumericError, ProtocolError
from mpc.core.sharing import reconstruct, share
from mpc.protocols import arith as protocols
from mpc.protocols.rangecheck import RangeGuard, count_outside, levels
from mpc.protocols.simulate import simulate

PARTIES = (2, 3)


def _edge_values(bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Values well inside 2^bits, and values outside it all over the ring (both signs, the
    quarter-ring beyond 2^62 where the exact truncation wraps, and -2^63)."""
    gen = torch.Generator().manual_seed(bits)
    last = levels(bits)[-1]
    inside_max = (1 << bits) - (1 << (last + 2))
    inside = torch.randint(-inside_max, inside_max, (200,), generator=gen, dtype=torch.int64)
    inside = torch.cat([inside, torch.tensor([0, inside_max - 1, -inside_max])])
    lows = sorted({bits + 1, 40, 47, 50, 61, 62} - set(range(bits + 1)))
    outside = [
        torch.randint(1 << lo, min((1 << (lo + 1)), 2**63 - 1), (20,), generator=gen) * sign
        for lo in lows
        for sign in (1, -1)
    ]
    wrap = torch.randint(-(2**63), 2**63 - 1, (300,), generator=gen, dtype=torch.int64)
    wrap = wrap[wrap.abs() >= (1 << bits) + (1 << (last + 2))]
    special = torch.tensor(
        [(1 << bits) + (1 << (last + 2)), -(1 << bits) - (1 << (last + 2)), -(2**63), 2**63 - 1]
    )
    return inside, torch.cat([*outside, wrap, special])


@pytest.mark.parametrize("n", PARTIES)
@pytest.mark.parametrize("bits", [14, 23, 29, 47])
def test_range_check_exact_over_the_whole_ring(n, bits, prg):
    """Each value alone: in range -> count 0, out of range (anywhere in Z_2^64) -> count > 0."""
    inside, outside = _edge_values(bits)
    # The aggregate over only in-range values is 0; adding any one outside value makes it > 0.
    res = simulate(n, lambda ctx, x: count_outside(ctx, [(x, bits)], []), share(inside, n, prg))
    assert int(reconstruct(res)) == 0
    for value in outside[:: max(1, len(outside) // 40)].tolist() + outside[-4:].tolist():
        x = torch.cat([inside[:20], torch.tensor([value])])
        res = simulate(n, lambda ctx, v: count_outside(ctx, [(v, bits)], []), share(x, n, prg))
        assert int(reconstruct(res)) > 0, (bits, value)


@pytest.mark.parametrize("n", PARTIES)
def test_wide_check(n, prg):
    ok = torch.tensor([0, 2**60, -(2**60), 2**61 - 2**40])
    for bad in (2**61 + 2**40, -(2**62), 2**62 + 5, -(2**63), 2**63 - 1):
        x = torch.cat([ok, torch.tensor([bad])])
        res = simulate(n, lambda ctx, v: count_outside(ctx, [], [v]), share(x, n, prg))
        assert int(reconstruct(res)) > 0, bad
    res = simulate(n, lambda ctx, v: count_outside(ctx, [], [v]), share(ok, n, prg))
    assert int(reconstruct(res)) == 0


@pytest.mark.parametrize("n", PARTIES)
def test_guard_check_opens_one_bit_and_raises(n, prg):
    good = torch.randint(-(2**28), 2**28, (50,), generator=torch.Generator().manual_seed(1))
    bad = good.clone()
    bad[17] += 1 << 48

    def run(ctx, x):
        guard = RangeGuard(dry=ctx.dry)
        guard.record(x, 29)
        guard.check(ctx, "epoch 1")
        return guard.checks

    res = simulate(n, run, share(good, n, prg))
    assert list(res) == [1] * n
    # 13 rounds: 4 (batched comparison) + 4 + 4 (zero test) + 1 (the opened bit)
    assert res.stats[0].rounds == 13
    assert res.stats[0].per_op["rangecheck"].rounds == 1  # the single opened bit
    with pytest.raises(NumericError, match="range check"):
        simulate(n, run, share(bad, n, prg))


def test_dry_guard_refuses_a_party_check(prg):
    """A guard made for the dealer's dry run keeps sizes only: a party checking it would pass
    any value, so that is a ProtocolError, not a silent pass."""
    bad = torch.full((8,), 1 << 50)

    def run(ctx, x):
        guard = RangeGuard(dry=True)
        guard.record(x, 29)
        guard.check(ctx, "epoch 1")

    with pytest.raises(ProtocolError, match="dry-run range guard"):
        simulate(2, run, share(bad, 2, prg))


def _wrapping_shares(x: torch.Tensor, prg) -> list[torch.Tensor]:
    """2-party shares of x whose signed sum overflows, so SecureML's local truncation wraps."""
    r = torch.randint(0, 2**20, x.shape, dtype=torch.int64)  # below |x|
    x1 = torch.where(x > 0, -(2**63) + r, (2**63 - 1) - r)  # x0 = x - x1 then has x1's sign
    return [x - x1, x1]


def test_wrapped_local_truncation_is_detected(prg):
    """A local truncation that wraps is off by 2^48 ring units; the guard catches it, where the
    plain protocol returns the wrong value silently."""
    x = torch.tensor([3 << 32, -(5 << 32), 7 << 30])  # 3.0, -5.0, 0.4375 at 2f = 32 bits

    def trunc(ctx, v):
        return protocols.truncate(ctx, v)

    wrong = reconstruct(simulate(2, trunc, _wrapping_shares(x, prg)))
    err = (wrong - (x >> 16)).abs()
    assert bool((err >= 2**47).all())  # silently wrong by 2^(64 - 16)

    def guarded(ctx, v):
        y = protocols.truncate(ctx, v)
        guard = RangeGuard()
        guard.record_truncated(y, 16)
        guard.check(ctx, "epoch 1")
        return y

    with pytest.raises(NumericError):
        simulate(2, guarded, _wrapping_shares(x, prg))
    # the same values with ordinary shares pass
    ok = reconstruct(simulate(2, guarded, share(x, 2, prg)))
    assert bool(((ok - (x >> 16)).abs() <= 1).all())


@pytest.mark.parametrize("n", (2, 3))
@pytest.mark.parametrize("where", ("none", "narrow", "wide"))
def test_guard_check_in_chunks_finds_a_bad_value_anywhere(monkeypatch, n, where, prg):
    """An epoch larger than ``CHECK_CHUNK`` level inputs is checked in several comparison
    calls (bounded memory): a bad value in the last chunk of either kind still fails it."""
    from mpc.protocols import rangecheck

    monkeypatch.setattr(rangecheck, "CHECK_CHUNK", 16)
    gen = torch.Generator().manual_seed(2)
    narrow = torch.randint(-(2**28), 2**28, (40,), generator=gen)
    wide = torch.randint(-(2**50), 2**50, (30,), generator=gen)
    if where == "narrow":
        narrow[-1] += 1 << 48
    elif where == "wide":
        wide[-1] = 1 << 62

    def run(ctx, x, w):
        guard = RangeGuard(dry=ctx.dry)  # the dealer keeps sizes only, chunked alike
        guard.record(x[:25], 29)  # 2 levels each: 25 values span several chunks
        guard.record(x[25:], 29)
        guard.record_wide(w)
        guard.check(ctx, "epoch 1")
        return guard.checks

    args = (share(narrow, n, prg), share(wide, n, prg))
    if where == "none":
        res = simulate(n, run, *args)
        assert list(res) == [1] * n
        assert res.stats[0].rounds > 13  # several comparison calls
    else:
        with pytest.raises(NumericError, match="range check"):
            simulate(n, run, *args)
