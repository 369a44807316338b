"""Exact discrete Gaussian noise on the fixed-point grid, from a cryptographic generator.

Each party adds to its own share of a summed gradient one draw of the discrete Gaussian
N_Z(0, s^2) on the integers (ring units), s = sigma * C * 2^bits / sqrt(n - collusion) (see
:func:`party_scale`): the honest parties' draws sum to noise of variance at least
(sigma * C)^2 in real terms, whichever ``collusion`` parties (plus the dealer and the launcher)
pool their views. The draws come from OpenDP's exact sampler [CKS20] (rejection from a
discrete Laplace, rational arithmetic, no floating-point Box-Muller) fed by the library's
cryptographically secure generator, never from the scenario seed or torch/numpy RNGs. For an
integer-valued sum of sensitivity Delta the discrete Gaussian gives exactly the Renyi
divergence of the continuous one [CKS20, Thm. 4]; a sum of independent discrete Gaussians of
scale s >= 1 is within a negligible distance of one [KLS21, Thm. 1] (here s ~ 2^32).

Not done here: nothing is sent; which values get noise is ``mpc.learn.dp``'s business.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch

__all__ = ["MAX_SCALE", "party_scale", "discrete_gaussian"]

MAX_SCALE = 2.0**56  # |noise| < 16 s stays far below 2^63 (the sampler's integer type)


def party_scale(noise_multiplier: float, clip: float, bits: int, n: int, collusion: int) -> float:
    """Standard deviation, in ring units at ``bits`` fractional bits, of each party's draw.

    ``n - collusion`` honest parties remain in any coalition of ``collusion`` parties, so each
    draws variance (sigma C 2^bits)^2 / (n - collusion) and the honest sum alone has the full
    calibrated variance.
    """
    if not 1 <= collusion <= n - 1:
        raise ValueError(f"party_scale: collusion must be in [1, {n - 1}], got {collusion}")
    scale = noise_multiplier * clip * 2.0**bits / math.sqrt(n - collusion)
    if not 1.0 <= scale <= MAX_SCALE:
        raise ValueError(f"party_scale: noise scale 2^{math.log2(scale):.1f} ring units is "
                         "outside [1, 2^56]")
    return scale


@functools.lru_cache(maxsize=16)
def _measurement(scale: float) -> Any:
    import opendp.prelude as dp

    # "contrib" enables OpenDP components whose proofs are community-contributed; the integer
    # discrete Gaussian is the CKS20 sampler (opendp.org docs, "make_gaussian").
    dp.enable_features("contrib")
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="i64")
    return dp.m.make_gaussian(*space, scale=scale)


def discrete_gaussian(shape: tuple[int, ...] | torch.Size, scale: float) -> torch.Tensor:
    """int64 tensor of independent draws of the discrete Gaussian N_Z(0, scale^2), exact.

    ~80 us per draw (OpenDP 0.16 on one core).
    """
    if not 0.0 < scale <= MAX_SCALE:
        raise ValueError(f"discrete_gaussian: scale must be in (0, 2^56], got {scale}")
    count = math.prod(shape)
    if count == 0:
        return torch.zeros(tuple(shape), dtype=torch.int64)
    draws = _measurement(float(scale))([0] * count)
    return torch.from_numpy(np.asarray(draws, dtype=np.int64)).reshape(tuple(shape))
