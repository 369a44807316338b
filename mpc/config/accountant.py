"""Privacy accounting for DP-SGD with Google's ``dp-accounting`` library (RDP accountant).

The mechanism is Poisson-subsampled Gaussian, composed over every step [Abadi et al. 2016,
ACG+16; [Mir17] for RDP; conversion to (epsilon, delta) by the library]: each step
includes every training row independently with probability q = B / N (``mpc.learn.dp`` samples
exactly this, from a seed the weight recipient never sees) and adds Gaussian noise of standard
deviation sigma * C to the sum of the clipped per-example gradients, under the
add-or-remove-one neighbouring relation. Nothing here is hand-derived: the RDP of the sampled
Gaussian and its conversion are the library's.

Not done here: nothing about the data; inputs are public parameters only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

__all__ = [
    "ACCOUNTANT",
    "ORDERS",
    "Accounting",
    "default_delta",
    "epsilon_for",
    "noise_for",
]

ACCOUNTANT = "dp-accounting RDP (Poisson-subsampled Gaussian, add/remove one)"
# The RDP orders of Opacus's accountant (opacus.accountants.RDPAccountant.DEFAULT_ALPHAS),
# so both libraries can be compared order for order; plus a few large ones for small epsilon.
ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512, 1024]
)


@dataclass(frozen=True)
class Accounting:
    """The privacy guarantee of one training run (what report.json's ``privacy`` holds)."""

    epsilon: float
    delta: float
    noise_multiplier: float
    sampling_rate: float
    steps: int


def default_delta(rows: int) -> float:
    """1 / (10 N) rounded down to a power of ten (N training rows), e.g. 1e-4 for N = 455."""
    if rows < 1:
        raise ValueError(f"default_delta: need at least one row, got {rows}")
    return 10.0 ** math.floor(math.log10(1.0 / (10 * rows)))


def _quiet() -> None:
    # The library logs (via absl) every RDP order it drops for non-convergence during the
    # calibration search: expected, and not this run's business.
    logging.getLogger("absl").setLevel(logging.ERROR)


def _event(noise_multiplier: float, q: float, steps: int):  # noqa: ANN202 - dp_accounting type
    import dp_accounting

    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, gaussian), steps)


def _accountant():  # noqa: ANN202
    from dp_accounting import rdp

    _quiet()
    return rdp.RdpAccountant(list(ORDERS))


def _check(q: float, steps: int, delta: float) -> None:
    if not 0.0 < q <= 1.0:
        raise ValueError(f"sampling rate must be in (0, 1], got {q}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def epsilon_for(noise_multiplier: float, q: float, steps: int, delta: float) -> float:
    """epsilon of ``steps`` Poisson(q)-sampled Gaussian steps of noise multiplier sigma."""
    _check(q, steps, delta)
    if noise_multiplier <= 0:
        return math.inf
    return float(_accountant().compose(_event(noise_multiplier, q, steps)).get_epsilon(delta))


def noise_for(epsilon: float, q: float, steps: int, delta: float) -> float:
    """The smallest noise multiplier (to 1e-4 relative) whose epsilon is <= ``epsilon``.

    The library's calibration (Brent's method) finds sigma to within its tolerance; it is then
    raised in small steps until the accountant's epsilon does not exceed the target.
    """
    import dp_accounting

    _check(q, steps, delta)
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    sigma = float(dp_accounting.calibrate_dp_mechanism(
        _accountant, lambda s: _event(s, q, steps), epsilon, delta,
        dp_accounting.LowerEndpointAndGuess(1e-3, 1.0), tol=1e-5))
    while epsilon_for(sigma, q, steps, delta) > epsilon:
        sigma *= 1.0001
    return sigma
