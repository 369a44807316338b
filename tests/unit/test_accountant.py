"""Privacy accounting (``mpc.config.accountant``, Google's dp-accounting) against Opacus's RDP
accountant, and the exact discrete Gaussian sampler (``mpc.core.noise``) against its law."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mpc.config.accountant import ORDERS, default_delta, epsilon_for, noise_for
from mpc.core.noise import discrete_gaussian, party_scale

OPACUS_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


@pytest.mark.parametrize(("sigma", "q", "steps", "delta"), [
    (4.63, 64 / 455, 80, 1e-4), (1.05, 64 / 455, 80, 1e-4), (1.1, 0.01, 10_000, 1e-5),
    (0.8, 0.05, 500, 1e-6)])
def test_epsilon_equals_opacus(sigma: float, q: float, steps: int, delta: float) -> None:
    """Same (sigma, q, steps, delta), Poisson sampling, same RDP orders: within 1 %."""
    pytest.importorskip("opacus")
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=OPACUS_ORDERS)
    theirs, _ = get_privacy_spent(orders=OPACUS_ORDERS, rdp=rdp, delta=delta)
    ours = epsilon_for(sigma, q, steps, delta)
    assert set(OPACUS_ORDERS) <= set(ORDERS)
    assert ours == pytest.approx(float(theirs), rel=0.01)


@pytest.mark.parametrize("target", (0.5, 1.0, 8.0))
def test_noise_for_target_never_exceeds_it(target: float) -> None:
    sigma = noise_for(target, 64 / 455, 80, 1e-4)
    eps = epsilon_for(sigma, 64 / 455, 80, 1e-4)
    assert eps <= target
    assert eps >= target * 0.99  # and is not needlessly noisy
    assert epsilon_for(sigma * 0.99, 64 / 455, 80, 1e-4) > eps


def test_default_delta() -> None:
    assert default_delta(455) == pytest.approx(1e-4)
    assert default_delta(100) == pytest.approx(1e-3)
    assert default_delta(1001) == pytest.approx(1e-5)


def _pmf(scale: float, support: np.ndarray) -> np.ndarray:
    ks = np.arange(-int(40 * scale) - 1, int(40 * scale) + 2)
    norm = np.exp(-(ks**2) / (2 * scale**2)).sum()
    return np.exp(-(support**2) / (2 * scale**2)) / norm


def test_discrete_gaussian_law() -> None:
    """10^5 draws of N_Z(0, s^2), s = 2.5: mean 0, variance within 3 % of the discrete
    Gaussian's (which is s^2 to 1e-30 here), and a chi-square goodness of fit (p > 1e-3)."""
    scale, count = 2.5, 100_000
    x = discrete_gaussian((count,), scale).numpy()
    support = np.arange(-30, 31)
    pmf = _pmf(scale, support)
    var = float((pmf * support**2).sum())
    assert abs(x.mean()) < 5 * math.sqrt(var / count)
    assert abs(x.var() / var - 1) < 0.03
    cells = np.arange(-7, 8)
    observed = np.array([(x <= -8).sum(), *[(x == k).sum() for k in cells], (x >= 8).sum()])
    p = _pmf(scale, cells)
    expected = count * np.array([(1 - p.sum()) / 2, *p, (1 - p.sum()) / 2])
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_discrete_gaussian_at_training_scale() -> None:
    """The scale training uses (sigma C 2^32 / sqrt(n - collusion) ring units): variance
    within 3 % over 10^5 draws, and no draw near the ring's range."""
    scale = party_scale(1.0, 1.0, 32, 3, 1)
    x = discrete_gaussian((100_000,), scale).numpy().astype(np.float64)
    assert abs(x.var() / scale**2 - 1) < 0.03
    assert abs(x.mean()) < 5 * scale / math.sqrt(len(x))
    assert np.abs(x).max() < 2.0**40
