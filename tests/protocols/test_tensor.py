"""SharedTensor operators against plaintext, and refusals (branching, unpermitted reveal)."""

from __future__ import annotations

import pytest
import torch

from mpc.config.policy import RevealRule
from mpc.core import fixedpoint
from mpc.core.errors import PolicyError
from mpc.core.sharing import reconstruct
from mpc.protocols.simulate import simulate
from mpc.protocols.tensor import SharedTensor
from tests.conftest import share_reals

ULP = 2.0**-16


@pytest.mark.parametrize("n", (2, 3, 5))
def test_operators_match_plaintext(n, prg):
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    w = torch.randn(4, 3, generator=gen, dtype=torch.float64)

    def program(ctx, xs, ys, ws):
        a, b, m = SharedTensor(ctx, xs), SharedTensor(ctx, ys), SharedTensor(ctx, ws)
        out = (a * b + 2 * a - 0.5 - b / 4) @ m
        return [out.share, (a >= 0.0).share, a.relu().share, a.sigmoid().share]

    res = simulate(n, program, share_reals(x, n, prg), share_reals(y, n, prg),
                   share_reals(w, n, prg))
    got = [fixedpoint.decode(reconstruct([r[i] for r in res])) for i in range(4)]
    want = (x * y + 2 * x - 0.5 - y / 4) @ w
    assert torch.allclose(got[0], want, atol=2e-3, rtol=0)
    assert torch.equal(got[1], (x >= 0).double())
    assert torch.allclose(got[2], x.clamp(min=0), atol=ULP)
    assert torch.allclose(got[3], torch.sigmoid(x), atol=3.5e-3)


def test_branching_on_a_secret_raises(prg):
    def program(ctx, xs):
        if SharedTensor(ctx, xs):  # the bug this guards against
            return 1
        return 0

    with pytest.raises(TypeError, match="cannot branch on a secret"):
        simulate(2, program, share_reals(torch.ones(3), 2, prg), timeout=5)


def test_reveal_needs_policy(prg):
    def program(ctx, xs):
        return SharedTensor(ctx, xs).reveal("weights", "w")

    x = torch.tensor([1.5, -2.0])
    got = simulate(2, program, share_reals(x, 2, prg),
                   policy_rules=(RevealRule("weights", "all"),))
    assert torch.equal(got[0], x) and torch.equal(got[1], x)
    with pytest.raises(PolicyError, match="refusing to reveal"):
        simulate(2, program, share_reals(x, 2, prg), timeout=5,
                 policy_rules=(RevealRule("weights", "launcher"),))
