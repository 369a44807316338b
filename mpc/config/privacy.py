"""The scenario's ``[privacy]`` table: differential privacy of the released weights.

``[privacy]`` turns training into DP-SGD (``mpc.learn.dp``) and states what the released model
guarantees: (epsilon, delta)-DP with respect to adding or removing one training row, for the
weights as received by the launcher, against the launcher, the dealer and any coalition of up
to ``collusion`` parties (each party's noise contribution is calibrated so that the other
parties' contributions alone suffice, see ``mpc.core.noise``).

Keys: ``epsilon`` (> 0) or ``noise_multiplier`` (sigma > 0; epsilon is then reported), one of
them required; ``delta`` (default 1 / (10 N) rounded down to a power of ten, N the training
rows); ``clip`` (per-example L2 bound C, default 1.0); ``collusion`` (1..n-1, default 1).

Refused with a ConfigError, since a data-dependent value would reach an output outside the
budget: any reveal other than the weights (the per-epoch ``loss``, and the ``statistics`` or
``metrics`` kinds), and joint standardisation (``data.standardize = true``): raw columns are
scaled instead with public per-column bounds (``data.bounds = {column = [lo, hi]}``: each
owner clips the column to [lo, hi] and divides it by max(|lo|, |hi|) at load; the launcher
divides the released first-layer weights by the same public factors, post-processing that
costs no privacy). Not yet implemented and refused: linear models on vertical partitions.

Not done here: no data is read; :func:`plan` turns the public parameters and the public row
count into the noise multiplier and the accountant's epsilon.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from mpc.config.accountant import ACCOUNTANT, Accounting, default_delta, epsilon_for, noise_for
from mpc.core.errors import ConfigError

__all__ = ["PrivacySpec", "parse_privacy", "plan", "report_block"]

_ALLOWED_REVEALS = ("weights", "intersection")


@dataclass(frozen=True)
class PrivacySpec:
    """``[privacy]``: target ``epsilon`` or fixed ``noise_multiplier``; ``delta`` None means
    the default from the row count; per-example ``clip`` C; ``collusion`` parties."""

    epsilon: float | None
    delta: float | None
    clip: float
    noise_multiplier: float | None
    collusion: int


def parse_privacy(sec: Any, raw: dict[str, Any], *, parties: int, kind: str, partition: str,
                  reveal_whats: tuple[str, ...]) -> PrivacySpec:
    """Read ``[privacy]`` (``sec``: the scenario reader's section) and check that the rest of
    the scenario (``raw``: the whole parsed TOML) releases nothing outside the budget."""
    eps = sec.take("epsilon", "float", None, low=0, strict=True)
    sigma = sec.take("noise_multiplier", "float", None, low=0, strict=True)
    if (eps is None) == (sigma is None):
        sec.fail("epsilon", "or privacy.noise_multiplier is required (exactly one of them)")
    delta = sec.take("delta", "float", None, low=0, strict=True)
    if delta is not None and delta >= 1:
        sec.fail("delta", f"must be < 1, got {delta!r}")
    spec = PrivacySpec(eps, delta, sec.take("clip", "float", 1.0, low=0, strict=True), sigma,
                       sec.take("collusion", "int", 1, low=1, high=parties - 1))
    file = sec.file
    if partition != "horizontal" and kind == "linear":
        raise ConfigError(f"{file}: [privacy] with a linear model needs data.partition = "
                          "'horizontal' (a vertical partition clips by the residual's norm, "
                          "which is bounded only for logistic and softmax)")
    for what in reveal_whats:
        if what not in _ALLOWED_REVEALS:
            raise ConfigError(f"{file}: reveal of {what!r} is refused with [privacy]: it is "
                              "computed from the data and would leak outside the privacy "
                              "budget (only the DP weights are released)")
    data = raw.get("data", {}) if isinstance(raw.get("data"), dict) else {}
    if data.get("standardize") is True:
        raise ConfigError(f"{file}: data.standardize = true is refused with [privacy]: joint "
                          "statistics would reach the raw-scale model outside the budget; "
                          "scale raw columns with public per-column bounds instead "
                          "(data.bounds = {column = [lo, hi]})")
    return spec


@functools.lru_cache(maxsize=8)
def plan(spec: PrivacySpec, rows: int, batch_size: int, epochs: int) -> Accounting:
    """Noise multiplier and accountant's epsilon for N = ``rows`` training rows, Poisson
    sampling at q = B / N and epochs * ceil(N / B) steps (public values only)."""
    if batch_size > rows:
        raise ConfigError(f"[privacy]: train.batch_size ({batch_size}) exceeds the {rows} "
                          "training rows (sampling rate above 1)")
    q = batch_size / rows
    steps = epochs * math.ceil(rows / batch_size)
    delta = spec.delta if spec.delta is not None else default_delta(rows)
    if spec.noise_multiplier is not None:
        sigma = spec.noise_multiplier
    elif spec.epsilon is not None:
        sigma = noise_for(spec.epsilon, q, steps, delta)
    else:  # parse_privacy requires one of the two
        raise ValueError("PrivacySpec needs epsilon or noise_multiplier")
    return Accounting(epsilon_for(sigma, q, steps, delta), delta, sigma, q, steps)


def report_block(spec: PrivacySpec, acc: Accounting) -> dict[str, Any]:
    """report.json's ``privacy`` object."""
    return {
        "epsilon": acc.epsilon, "delta": acc.delta, "noise_multiplier": acc.noise_multiplier,
        "clip": spec.clip, "sampling": {"method": "poisson", "rate": acc.sampling_rate},
        "steps": acc.steps, "accountant": ACCOUNTANT, "collusion": spec.collusion,
        "target_epsilon": spec.epsilon,
    }
