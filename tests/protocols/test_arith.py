"""Beaver products, truncation and openings against a plaintext reference (simulation)."""

from __future__ import annotations

import pytest
import torch

from mpc.core import fixedpoint
from mpc.core.sharing import reconstruct, share
from mpc.protocols import arith as protocols
from mpc.protocols.simulate import simulate
from tests.conftest import share_reals

PARTIES = (2, 3, 5)
ULP = 2.0**-16


@pytest.mark.parametrize("n", PARTIES)
def test_mul_matches_plaintext(n, prg):
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(500, generator=gen, dtype=torch.float64) * 10
    y = torch.randn(500, generator=gen, dtype=torch.float64) * 10
    res = simulate(
        n,
        lambda ctx, a, b: protocols.mul(ctx, a, b),
        share_reals(x, n, prg),
        share_reals(y, n, prg),
    )
    got = fixedpoint.decode(reconstruct(res))
    # encoding error of each operand (0.5 ulp * |other|) plus truncation (<= 1 ulp + n-1 ulp)
    tol = 0.5 * ULP * (x.abs() + y.abs()) + (n + 1) * ULP
    assert bool(((got - x * y).abs() <= tol).all())
    assert res.stats[0].rounds == (1 if n == 2 else 2)


@pytest.mark.parametrize("n", PARTIES)
def test_matmul_matches_plaintext(n, prg):
    gen = torch.Generator().manual_seed(10 + n)
    a = torch.randn(17, 33, generator=gen, dtype=torch.float64)
    b = torch.randn(33, 4, generator=gen, dtype=torch.float64)
    res = simulate(
        n,
        lambda ctx, u, v: protocols.matmul(ctx, u, v),
        share_reals(a, n, prg),
        share_reals(b, n, prg),
    )
    got = fixedpoint.decode(reconstruct(res))
    assert torch.allclose(got, a @ b, atol=33 * ULP * 4 + (n + 1) * ULP, rtol=0)


@pytest.mark.parametrize("n", PARTIES)
def test_ring_ops_exact(n, prg):
    """Unscaled products and sums are exact ring operations (wraparound included)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(-(2**62), 2**62, (64,), generator=gen, dtype=torch.int64) * 2
    y = torch.randint(-(2**62), 2**62, (64,), generator=gen, dtype=torch.int64)
    res = simulate(
        n,
        lambda ctx, a, b: protocols.mul(ctx, a, b, scaled=False),
        share(x, n, prg),
        share(y, n, prg),
    )
    assert torch.equal(reconstruct(res), x * y)
    assert torch.equal(
        reconstruct([s + t for s, t in zip(share(x, n, prg), share(y, n, prg), strict=False)]),
        x + y,
    )


@pytest.mark.parametrize("n", PARTIES)
def test_truncation_error_at_most_one_ulp(n, prg):
    gen = torch.Generator().manual_seed(4)
    # values at 2f fractional bits within the documented range |x| < 2^36 (local, n = 2)
    raw = torch.randint(-(2**36), 2**36, (20000,), generator=gen, dtype=torch.int64)
    res = simulate(n, lambda ctx, a: protocols.truncate(ctx, a), share(raw, n, prg))
    got = reconstruct(res)
    want = raw >> 16
    assert int((got - want).abs().max()) <= 1


@pytest.mark.parametrize("n", PARTIES)
def test_matmuls_share_an_operand_in_one_round(n, prg):
    """a^T d and d W^T in one round: d is opened once; the unscaled product is exact in the
    ring, the scaled one within the truncation's error."""
    gen = torch.Generator().manual_seed(20 + n)
    a = torch.randn(8, 5, generator=gen, dtype=torch.float64)
    d = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 3, generator=gen, dtype=torch.float64)

    def program(ctx, a_sh, d_sh, w_sh):
        return protocols.matmuls(
            ctx, [(a_sh.T.contiguous(), d_sh), (d_sh, w_sh.T.contiguous())], scaled=[False, True]
        )

    res = simulate(n, program, share_reals(a, n, prg), share_reals(d, n, prg),
                   share_reals(w, n, prg))
    ea, ed = fixedpoint.encode(a), fixedpoint.encode(d)
    assert torch.equal(reconstruct([r[0] for r in res]), ea.T @ ed)
    got = fixedpoint.decode(reconstruct([r[1] for r in res]))
    assert float((got - d @ w.T).abs().max()) <= 5 * (n + 1) * ULP
    assert res.stats[0].rounds == (1 if n == 2 else 2)
    if n == 2:  # one opening of a^T, d and W^T (40 + 24 + 15 words + a frame header): d once
        assert (40 + 24 + 15) * 8 <= res.stats[0].bytes_sent < (40 + 24 + 24 + 15) * 8
